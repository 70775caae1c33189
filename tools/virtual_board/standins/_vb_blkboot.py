# Virtual-board harness, MicroPython side: one boot on block flash. The flash block device is
# made here, before _vb_boot runs the boot as on the directory flash, so that the directory
# flash's harness (_vb_flash) carries no code or names of the block flash's: every name costs
# the board heap once its module loads (a qstr pool), and D1 counts that heap.
# mypy: ignore-errors
import os

import _vb_blockdev
import _vb_flash

# The stand-ins are imported now, while "/" is still the host's (they are not on the board's
# filesystem, and a mount point for them would show in a listing of "/"), as a board's
# firmware modules are there from the start.
import machine  # noqa: F401
import network  # noqa: F401
import ntptime  # noqa: F401

_env = _vb_flash._env_int
_vb_flash.flash = _vb_blockdev.FlashBlockDevice(
    open(os.getenv("VB_IMAGE"), "r+b"), _env("VB_BLOCK_SIZE", 4096), _env("VB_BLOCK_COUNT", 0),
    _env("VB_CUT_AT", 0), _env("VB_TORN", 0), os.getenv("VB_TORN_REST") or "ff",
    lambda: _vb_flash.end_boot("power_cut"), os.getenv("VB_FS") or "lfs2",
    _env("VB_PROG_SIZE", 32))
del _env

import _vb_boot  # noqa: E402,F401  (runs the boot)
