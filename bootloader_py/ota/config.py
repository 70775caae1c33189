# The board's provisioned configuration, /ota_id/config.json (docs/board.md lists every key).
import json

from micropython import const

import ota

PATH = "/ota_id/config.json"  # ota.path: /ota/config.json on boards provisioned before
# Every span in the config becomes a time.ticks_add/ticks_diff delta, which must stay below
# 2**29 ms on 32-bit ports (docs/board.md, Ticks): each is held to 6 days here, whatever the
# file says (provisioning refuses more: tools/board_files.py, MAX_SPAN_S).
_MAX_SPAN_S = const(518400)
_SPANS = ("confirm_after_s", "timeout_s", "wifi_timeout_s")

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
    """The config dict with defaults filled in, its spans (seconds) at most 6 days (poll.every_min
    is bounded where the poll is scheduled: ota/run.py). Raises OSError/ValueError when
    unreadable, TypeError when a span is not a number."""
    with open(ota.path(path)) as f:
        cfg = json.load(f)
    for key in DEFAULTS:
        if key not in cfg:
            cfg[key] = DEFAULTS[key]
    for key in _SPANS:
        if cfg[key] > _MAX_SPAN_S:
            cfg[key] = _MAX_SPAN_S
    return cfg
