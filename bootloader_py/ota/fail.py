# The errors the client's modules share. They live in this tiny module, never unloaded, so
# their classes stay the same objects while the client unloads and reloads ota.http to give
# the manifest verify its heap.


class UpdateFailed(Exception):
    """An update attempt failed; the active slot is untouched and the reason gets reported."""


class HttpError(Exception):
    """Transport failure: connect, timeout, reset, malformed or truncated response."""
