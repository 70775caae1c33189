# The one error an update attempt ends with; its message is the `reason` of the failed report.


class UpdateFailed(Exception):
    """An update attempt failed; the active slot is untouched and the reason gets reported."""
