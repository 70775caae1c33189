# The board's provisioned configuration, /ota/config.json (docs/board.md lists every key).
import json

PATH = "/ota/config.json"

DEFAULTS = {
    "trial_boots": 3,
    "auto_confirm": True,
    "confirm_after_s": 10,
    "timeout_s": 20,
    "wifi_timeout_s": 15,
    "poll": {"at_boot": True, "every_min": 60},
    "channel": "stable",
}


def load(path=PATH):
    """The config dict with defaults filled in. Raises OSError/ValueError when unreadable."""
    with open(path) as f:
        cfg = json.load(f)
    for key in DEFAULTS:
        if key not in cfg:
            cfg[key] = DEFAULTS[key]
    return cfg
