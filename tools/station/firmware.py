"""The firmware floor at the station: which MicroPython a board runs, or a firmware image holds,
and a refusal before anything is written when it is older than the floor
(`signing.manifest.MICROPYTHON_FLOOR`; why that version: docs/board.md, Firmware floor).

A running board is asked over its raw REPL (`sys.implementation.version`); a firmware image the
station is about to flash is read for the banner every MicroPython build carries
(`MICROPY_BANNER_NAME_AND_VERSION` in py/mpconfig.h: "MicroPython v1.25.0 on 2025-04-15").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from signing.manifest import MICROPYTHON_FLOOR, micropython_version

# py/mpconfig.h (v1.23.0): "MicroPython " MICROPY_GIT_TAG " on " MICROPY_BUILD_DATE, with
# "(with v2.0 preview) " before the tag in MICROPY_PREVIEW_VERSION_2 builds. The tag is
# "v1.25.0" for a release, "v1.26.0-preview.123.gabcdef" for a build between releases.
_BANNER = re.compile(rb"MicroPython (?:\(with v2\.0 preview\) )?"
                     rb"v(\d{1,3})\.(\d{1,3})\.(\d{1,3})(-preview)?[-.+\w]* on \d{4}-\d\d-\d\d")


class FirmwareError(RuntimeError):
    """The board's or the image's MicroPython is older than the floor, or cannot be told."""


@dataclass(frozen=True, order=True)
class MicroPythonVersion:
    """A MicroPython version; a preview (a build on the way to X.Y.Z) sorts before X.Y.Z."""

    major: int
    minor: int
    micro: int
    released: bool = True  # False: a preview build of this version

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.micro}" + ("" if self.released else "-preview")


FLOOR = MicroPythonVersion(*micropython_version(MICROPYTHON_FLOOR))
# The romfs client layout runs the client from a ROM partition: `vfs.VfsRom` is first in
# v1.25.0 (extmod/vfs_rom.c), so those boards need that much (docs/board.md, Firmware floor).
ROMFS_FLOOR = MicroPythonVersion(1, 25, 0)


def floor_for(client: str) -> tuple[MicroPythonVersion, str]:
    """The oldest MicroPython a board with this client layout runs, and why, for messages."""
    if client == "romfs":
        return ROMFS_FLOOR, "the romfs client layout's floor (vfs.VfsRom)"
    return FLOOR, "the firmware floor"


def version_from_implementation(value: object) -> MicroPythonVersion:
    """`sys.implementation.version` as a board reported it: (1, 22, 2) before 1.23, then
    (1, 25, 0, '') with the pre-release name last ('preview' between releases).

    Raises FirmwareError for any other shape.
    """
    if (isinstance(value, tuple) and len(value) in (3, 4)
            and all(isinstance(part, int) and not isinstance(part, bool) and part >= 0
                    for part in value[:3])
            and (len(value) == 3 or isinstance(value[3], str))):
        prerelease = value[3] if len(value) == 4 else ""
        return MicroPythonVersion(value[0], value[1], value[2], released=not prerelease)
    raise FirmwareError(f"sys.implementation.version is {value!r}, not a MicroPython version")


def version_in_image(firmware: bytes) -> MicroPythonVersion | None:
    """The MicroPython version of a firmware image (its banner), or None when it has none."""
    found = _BANNER.search(firmware)
    if found is None:
        return None
    major, minor, micro = (int(part) for part in found.groups()[:3])
    return MicroPythonVersion(major, minor, micro, released=found.group(4) is None)


def check_board_version(port: str, version: MicroPythonVersion, client: str = "files") -> str:
    """The version as text when it is at or above the floor of the `client` layout;
    FirmwareError naming the port, the version found and the floor otherwise."""
    floor, what = floor_for(client)
    if version < floor:
        raise FirmwareError(
            f"{port}: the board runs MicroPython {version}, older than {what} {floor}; "
            f"nothing was written: flash MicroPython {floor} or later, then re-run "
            f"(docs/board.md, Firmware floor)")
    return str(version)


def check_firmware_image(firmware: bytes, client: str = "files") -> str:
    """The image's MicroPython version as text when it is at or above the floor of the
    `client` layout; FirmwareError when it is older or carries no MicroPython banner (then
    it cannot be told)."""
    floor, what = floor_for(client)
    version = version_in_image(firmware)
    if version is None:
        raise FirmwareError(
            f"the firmware image ({len(firmware)} bytes) has no MicroPython banner "
            f"(\"MicroPython vX.Y.Z on YYYY-MM-DD\"): its version cannot be checked against "
            f"{what} {floor}; nothing was written")
    if version < floor:
        raise FirmwareError(
            f"the firmware image is MicroPython {version}, older than {what} {floor}; "
            f"nothing was written: use a MicroPython {floor} or later image "
            f"(docs/board.md, Firmware floor)")
    return str(version)
