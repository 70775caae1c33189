"""Load and validate `fleet.yaml`: the fleet's server, channels, groups, rollout policy,
Wi-Fi profiles, boards and provisioning profiles.

Every error names the file and line of the offending entry, and nothing is half-loaded: a fleet
either validates completely or `FleetError` is raised. Secrets are never values in the file:
a Wi-Fi profile or the server names an environment variable or a file that holds them, and a
literal password or token is refused.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools.board_files import CLIENT_LAYOUTS, MAX_SPAN_S, ClientLayout

SUPPORTED_VERSION = 1
WRITE_METHODS = ("mpremote", "image")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# Keys that would put a secret value into the file itself; refused wherever they appear.
_LITERAL_SECRET_KEYS = ("password", "psk", "passphrase", "token", "publisher_token", "secret")


class FleetError(ValueError):
    """fleet.yaml is malformed or inconsistent; the message names file and line."""


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file (never the value itself)."""

    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        return f"${self.env}" if self.env else f"file {self.file}"


@dataclass(frozen=True)
class ServerSettings:
    url: str
    publisher_token: SecretRef
    root: Path | None = None  # signed root metadata the boards get as trust.json
    # The CA boards trust for an https server (PEM or DER; boards get it as /ota_id/ca.der).
    ca: Path | None = None


@dataclass(frozen=True)
class Channel:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class RolloutPolicy:
    canary_group: str | None
    stages: tuple[int, ...]  # percentages of the channel's boards, strictly increasing, last 100
    failure_threshold: float  # pause when failed / results passes this ...
    min_results: int | None  # ... after at least this many results (None: the server's rule)


@dataclass(frozen=True)
class WifiProfile:
    name: str
    ssid: str
    password: SecretRef


@dataclass(frozen=True)
class Board:
    """A board type: what the station must know to identify and flash one."""

    name: str
    chip: str  # esptool chip name ("esp32", ...), "rp2" or "unix" (virtual board)
    flash_size: int = 0
    firmware_offset: int = 0
    fs_offset: int = 0  # the filesystem partition (ESP32: `vfs`)
    fs_size: int = 0
    prog_size: int = 32  # littlefs read/prog size MicroPython uses on this port
    filesystem: str = "littlefs"  # what the port formats fs_offset/fs_size as: FILESYSTEMS

    @property
    def is_espressif(self) -> bool:
        return self.chip.startswith("esp")


FILESYSTEMS = ("littlefs", "fat")
# Chips whose MicroPython `tls` cannot verify a server's certificate: the ESP8266's is axTLS,
# whose SSLContext has no CERT_REQUIRED, no load_verify_locations, and reads verify_mode as
# CERT_NONE whatever is set (extmod/modtls_axtls.c, v1.23.0 to v1.25.0). docs/board.md,
# Platforms: such boards are served over http, the signed manifest keeping the update's
# integrity.
TLS_UNVERIFIED_CHIPS = {"esp8266": "its tls is axTLS, which cannot verify a certificate"}
# The longest period machine.WDT takes, by chip, where one chip name means one limit (v1.23.0 to
# v1.25.0): the ESP8266's takes 5000 ms and nothing else (ports/esp8266/machine_wdt.c), the
# STM32's independent watchdog 4095 ticks of 8 ms (ports/stm32/machine_wdt.c, "WDT timeout too
# long" above 32767 ms). A longer trial watchdog is a ValueError on the board: refused here.
# (Not rp2: the RP2040 counts 8388 ms, the RP2350 twice that, under one chip name.)
WDT_LONGEST_MS = {"esp8266": (5000, "ports/esp8266/machine_wdt.c: fixed"),
                  "stm32": (32767, "ports/stm32/machine_wdt.c")}


def image_method_problem(board: Board) -> str | None:
    """Why the image method cannot provision `board`, or None when it can.

    The image method builds a littlefs image and writes it with esptool; shared by fleet.yaml
    validation and `ota provision --method`, so both refuse alike.
    """
    if not board.fs_size:
        return f"the image method needs fs_offset/fs_size on board {board.name!r}"
    if board.filesystem != "littlefs":
        return (f"board {board.name!r} has a {board.filesystem.upper()} filesystem and the image "
                f"method builds littlefs images only: use method mpremote, which writes the "
                f"files through the board's own filesystem (docs/provisioning.md)")
    if not board.is_espressif:
        return "the image method writes with esptool: Espressif boards only"
    return None


def https_problem(board: Board, server_url: str) -> str | None:
    """Why boards of type `board` cannot talk to `server_url`, or None when they can: an
    https server its firmware cannot verify (TLS_UNVERIFIED_CHIPS) is refused, never used
    unverified."""
    reason = TLS_UNVERIFIED_CHIPS.get(board.chip)
    if reason is None or not server_url.startswith("https://"):
        return None
    return (f"board {board.name!r} cannot verify an https server ({reason}: docs/board.md, "
            f"Platforms): serve its boards over http, where the signed manifest still protects "
            f"the update's integrity")


@dataclass(frozen=True)
class FirstApp:
    """The app a board leaves the factory with, in slot a (later ones come over the air)."""

    directory: Path
    name: str
    version: str
    sequence: int
    entry: str


@dataclass(frozen=True)
class ProvisioningProfile:
    name: str
    board: Board
    wifi: WifiProfile | None
    channel: Channel
    tags: tuple[str, ...] = ()
    method: str = "mpremote"
    firmware: Path | None = None
    poll_interval_s: int = 3600
    mpy: bool = True
    app: FirstApp | None = None
    # The app whose releases the boards take (config.json `app`): `app:` as a name, or the
    # first app's name; None: each board takes the first app offered (docs/threat-model.md).
    app_name: str | None = None
    client: ClientLayout = "files"  # where the OTA client's code goes (tools/board_files.py)
    romfs_offset: int | None = None  # image method, client romfs: the ROMFS partition's offset
    ca: Path | None = None  # overrides server.ca for this profile's boards
    # The board's trial, confirm and timeout settings (BoardConfig fields of the same names);
    # only those the profile sets, the rest keep BoardConfig's defaults.
    behaviour: tuple[tuple[str, int | bool], ...] = ()


@dataclass(frozen=True)
class Fleet:
    path: Path
    server: ServerSettings
    channels: dict[str, Channel]
    groups: dict[str, Group]
    rollout: RolloutPolicy
    wifi: dict[str, WifiProfile]
    boards: dict[str, Board]
    provisioning: dict[str, ProvisioningProfile] = field(default_factory=dict)

    def profile(self, name: str) -> ProvisioningProfile:
        try:
            return self.provisioning[name]
        except KeyError:
            known = ", ".join(sorted(self.provisioning)) or "none"
            raise FleetError(
                f"{self.path}: no provisioning profile {name!r} (known: {known})"
            ) from None


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


class _Map(dict[str, Any]):
    """A mapping that remembers the line of itself and of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise FleetError(f"line {key_node.start_mark.line + 1}: keys must be strings")
        if key in result:
            raise FleetError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class _Reader:
    """Typed access to the parsed document; every complaint carries file:line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int, message: str) -> FleetError:
        return FleetError(f"{self.path}:{line}: {message}")

    def mapping(self, parent: _Map, key: str, *, required: bool = True) -> _Map:
        value = parent.get(key)
        if value is None:
            if required:
                raise self.fail(parent.line, f"missing section {key!r}")
            empty = _Map()
            empty.line, empty.key_lines = parent.line, {}
            return empty
        if not isinstance(value, _Map):
            raise self.fail(parent.key_lines[key], f"{key!r} must be a mapping")
        return value

    def field(self, parent: _Map, key: str, kind: type | tuple[type, ...], *,
              default: Any = ..., where: str) -> Any:
        if key not in parent or parent[key] is None:
            if default is ...:
                raise self.fail(parent.line, f"{where}: missing {key!r}")
            return default
        value = parent[key]
        # bool is an int in Python; a `true` where a number belongs is a mistake.
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(parent.key_lines[key], f"{where}: {key!r} must be a {names}")
        return value

    def strings(self, parent: _Map, key: str, *, where: str) -> tuple[str, ...]:
        value = self.field(parent, key, list, default=[], where=where)
        if not all(isinstance(item, str) for item in value):
            raise self.fail(parent.key_lines[key], f"{where}: {key!r} must be a list of strings")
        return tuple(value)

    def only(self, entry: _Map, allowed: tuple[str, ...], *, where: str) -> None:
        for key in entry:
            if key.lower() in _LITERAL_SECRET_KEYS:
                raise self.fail(
                    entry.key_lines[key],
                    f"{where}: {key!r} would put a secret in fleet.yaml; name it instead with "
                    f"{key}_env (an environment variable) or {key}_file (a file)",
                )
            if key not in allowed:
                raise self.fail(
                    entry.key_lines[key],
                    f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})",
                )

    def name(self, parent: _Map, key: str, *, where: str) -> str:
        if not _NAME.match(key):
            raise self.fail(parent.key_lines[key],
                            f"{where}: name {key!r} must match {_NAME.pattern}")
        return key

    def secret(self, entry: _Map, stem: str, *, where: str, required: bool = True
               ) -> SecretRef | None:
        env = self.field(entry, f"{stem}_env", str, default=None, where=where)
        file = self.field(entry, f"{stem}_file", str, default=None, where=where)
        if env and file:
            raise self.fail(entry.key_lines[f"{stem}_file"],
                            f"{where}: give {stem}_env or {stem}_file, not both")
        if env is None and file is None:
            if required:
                raise self.fail(entry.line, f"{where}: missing {stem}_env or {stem}_file")
            return None
        if env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise self.fail(entry.key_lines[f"{stem}_env"],
                            f"{where}: {stem}_env must be an environment variable name")
        return SecretRef(env=env, file=self.relative(file) if file else None)

    def relative(self, value: str) -> Path:
        """Paths in fleet.yaml are relative to the file itself, so the fleet can move."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.path.parent / path


def _integer(reader: _Reader, entry: _Map, key: str, *, where: str, default: int = ...  # type: ignore[assignment]
             ) -> int:
    value = reader.field(entry, key, int, default=default, where=where)
    if value < 0:
        raise reader.fail(entry.key_lines[key], f"{where}: {key!r} must not be negative")
    return int(value)


# ---------------------------------------------------------------------------------------------
# sections


def _server(r: _Reader, doc: _Map) -> ServerSettings:
    entry = r.mapping(doc, "server")
    r.only(entry, ("url", "publisher_token_env", "publisher_token_file", "root", "ca"),
           where="server")
    url = r.field(entry, "url", str, where="server")
    if not re.match(r"^https?://[^\s/]+", url):
        raise r.fail(entry.key_lines["url"], f"server: url {url!r} must be http(s)://host[...]")
    token = r.secret(entry, "publisher_token", where="server")
    assert token is not None
    root = r.field(entry, "root", str, default=None, where="server")
    ca = r.field(entry, "ca", str, default=None, where="server")
    return ServerSettings(url=url.rstrip("/"), publisher_token=token,
                          root=r.relative(root) if root else None,
                          ca=r.relative(ca) if ca else None)


def _channels(r: _Reader, doc: _Map) -> dict[str, Channel]:
    section = r.mapping(doc, "channels")
    channels = {}
    for key, value in section.items():
        where = f"channel {key!r}"
        name = r.name(section, key, where=where)
        entry = value if isinstance(value, _Map) else None
        if value is not None and entry is None:
            raise r.fail(section.key_lines[key], f"{where}: must be a mapping (or empty)")
        description = ""
        if entry is not None:
            r.only(entry, ("description",), where=where)
            description = r.field(entry, "description", str, default="", where=where)
        channels[name] = Channel(name=name, description=description)
    if not channels:
        raise r.fail(section.line, "channels: at least one channel is needed")
    return channels


def _groups(r: _Reader, doc: _Map) -> dict[str, Group]:
    section = r.mapping(doc, "groups", required=False)
    groups = {}
    for key, entry in section.items():
        where = f"group {key!r}"
        name = r.name(section, key, where=where)
        if not isinstance(entry, _Map):
            raise r.fail(section.key_lines[key], f"{where}: must be a mapping")
        r.only(entry, ("tags", "devices"), where=where)
        groups[name] = Group(name=name, tags=r.strings(entry, "tags", where=where),
                             devices=r.strings(entry, "devices", where=where))
    return groups


def _rollout(r: _Reader, doc: _Map, groups: dict[str, Group]) -> RolloutPolicy:
    entry = r.mapping(doc, "rollout")
    where = "rollout"
    r.only(entry, ("canary_group", "stages", "failure_threshold", "min_results"), where=where)
    canary = r.field(entry, "canary_group", str, default=None, where=where)
    if canary is not None and canary not in groups:
        raise r.fail(entry.key_lines["canary_group"], f"{where}: no group {canary!r}")
    stages = r.field(entry, "stages", list, default=[100], where=where)
    line = entry.key_lines.get("stages", entry.line)
    if not stages or not all(isinstance(s, int) and not isinstance(s, bool) for s in stages):
        raise r.fail(line, f"{where}: stages must be a non-empty list of integer percentages")
    if any(b <= a for a, b in itertools.pairwise(stages)) or stages[0] <= 0 \
            or stages[-1] != 100:
        raise r.fail(line, f"{where}: stages must increase strictly from above 0 up to 100")
    threshold = r.field(entry, "failure_threshold", (int, float), default=0.2, where=where)
    if not 0 < threshold <= 1:
        raise r.fail(entry.key_lines["failure_threshold"],
                     f"{where}: failure_threshold must be in (0, 1]")
    # Absent: the server's rule for every fleet size (docs/operations.md).
    min_results = r.field(entry, "min_results", int, default=None, where=where)
    if min_results is not None and min_results < 1:
        raise r.fail(entry.key_lines["min_results"], f"{where}: min_results must be at least 1")
    return RolloutPolicy(canary_group=canary, stages=tuple(stages),
                         failure_threshold=float(threshold), min_results=min_results)


def _wifi(r: _Reader, doc: _Map) -> dict[str, WifiProfile]:
    section = r.mapping(doc, "wifi", required=False)
    profiles = {}
    for key, entry in section.items():
        where = f"wifi profile {key!r}"
        name = r.name(section, key, where=where)
        if not isinstance(entry, _Map):
            raise r.fail(section.key_lines[key], f"{where}: must be a mapping")
        r.only(entry, ("ssid", "password_env", "password_file"), where=where)
        ssid = r.field(entry, "ssid", str, where=where)
        if not 1 <= len(ssid.encode()) <= 32:
            raise r.fail(entry.key_lines["ssid"], f"{where}: ssid must be 1 to 32 bytes")
        password = r.secret(entry, "password", where=where)
        assert password is not None
        profiles[name] = WifiProfile(name=name, ssid=ssid, password=password)
    return profiles


def _boards(r: _Reader, doc: _Map) -> dict[str, Board]:
    section = r.mapping(doc, "boards")
    boards = {}
    allowed = ("chip", "flash_size", "firmware_offset", "fs_offset", "fs_size", "prog_size",
               "filesystem")
    for key, entry in section.items():
        where = f"board {key!r}"
        name = r.name(section, key, where=where)
        if not isinstance(entry, _Map):
            raise r.fail(section.key_lines[key], f"{where}: must be a mapping")
        r.only(entry, allowed, where=where)
        board = Board(
            name=name,
            chip=r.field(entry, "chip", str, where=where),
            flash_size=_integer(r, entry, "flash_size", where=where, default=0),
            firmware_offset=_integer(r, entry, "firmware_offset", where=where, default=0),
            fs_offset=_integer(r, entry, "fs_offset", where=where, default=0),
            fs_size=_integer(r, entry, "fs_size", where=where, default=0),
            prog_size=_integer(r, entry, "prog_size", where=where, default=32),
            filesystem=r.field(entry, "filesystem", str, default="littlefs", where=where),
        )
        line = entry.line
        if board.filesystem not in FILESYSTEMS:
            raise r.fail(entry.key_lines["filesystem"],
                         f"{where}: filesystem must be one of {', '.join(FILESYSTEMS)}, "
                         f"not {board.filesystem!r}")
        if board.filesystem != "littlefs" and "prog_size" in entry:
            raise r.fail(entry.key_lines["prog_size"],
                         f"{where}: prog_size is littlefs's; a {board.filesystem.upper()} "
                         f"filesystem has none")
        # littlefs needs whole 4 KiB blocks, and the partition must fit in the flash.
        if board.fs_offset % 4096 or board.fs_size % 4096:
            raise r.fail(line, f"{where}: fs_offset and fs_size must be multiples of 4096")
        if board.flash_size and board.fs_offset + board.fs_size > board.flash_size:
            raise r.fail(line, f"{where}: the fs partition ends past flash_size")
        if board.prog_size not in (32, 64, 128, 256):
            raise r.fail(line, f"{where}: prog_size must be 32, 64, 128 or 256")
        boards[name] = board
    return boards


def _provisioning(r: _Reader, doc: _Map, server: ServerSettings, boards: dict[str, Board],
                  wifi: dict[str, WifiProfile], channels: dict[str, Channel]
                  ) -> dict[str, ProvisioningProfile]:
    section = r.mapping(doc, "provisioning")
    allowed = ("board", "wifi", "channel", "tags", "method", "firmware", "poll_interval_s", "mpy",
               "app", "client", "romfs_offset", "ca", *_BEHAVIOUR)
    profiles = {}
    for key, entry in section.items():
        where = f"provisioning profile {key!r}"
        name = r.name(section, key, where=where)
        if not isinstance(entry, _Map):
            raise r.fail(section.key_lines[key], f"{where}: must be a mapping")
        r.only(entry, allowed, where=where)

        def pick(table: dict[str, Any], field_name: str, required: bool = True,
                 _entry: _Map = entry, _where: str = where) -> Any:
            ref = r.field(_entry, field_name, str, default=None if not required else ...,
                          where=_where)
            if ref is None:
                return None
            if ref not in table:
                known = ", ".join(sorted(table)) or "none"
                raise r.fail(_entry.key_lines[field_name],
                             f"{_where}: no {field_name} {ref!r} (known: {known})")
            return table[ref]

        board = pick(boards, "board")
        method = r.field(entry, "method", str, default="mpremote", where=where)
        if method not in WRITE_METHODS:
            raise r.fail(entry.key_lines["method"],
                         f"{where}: method must be one of {', '.join(WRITE_METHODS)}")
        if method == "image":
            problem = image_method_problem(board)
            if problem is not None:
                raise r.fail(entry.key_lines["method"], f"{where}: {problem}")
        problem = https_problem(board, server.url)
        if problem is not None:
            raise r.fail(entry.key_lines["board"], f"{where}: {problem}")
        firmware = r.field(entry, "firmware", str, default=None, where=where)
        poll = _integer(r, entry, "poll_interval_s", where=where, default=3600)
        if not 10 <= poll <= MAX_SPAN_S:
            raise r.fail(entry.key_lines["poll_interval_s"],
                         f"{where}: poll_interval_s must be 10 to {MAX_SPAN_S} (6 days: the "
                         f"board's tick counter, docs/board.md), not {poll}")
        mpy = r.field(entry, "mpy", bool, default=True, where=where)
        client, romfs_offset = _client_layout(r, entry, where, board, method, mpy)
        ca = r.field(entry, "ca", str, default=None, where=where)
        first = _first_app(r, entry, where)
        profiles[name] = ProvisioningProfile(
            name=name, board=board, wifi=pick(wifi, "wifi", required=False),
            channel=pick(channels, "channel"), tags=r.strings(entry, "tags", where=where),
            method=method, firmware=r.relative(firmware) if firmware else None,
            poll_interval_s=poll, mpy=mpy, app=first,
            app_name=first.name if first is not None else _bound_app(r, entry, where),
            client=client, romfs_offset=romfs_offset, behaviour=_behaviour(r, entry, where, board),
            ca=r.relative(ca) if ca else None,
        )
    return profiles


# Board settings a profile may set, as config.json and BoardConfig name them, with their types.
_BEHAVIOUR: dict[str, type] = {"trial_boots": int, "auto_confirm": bool, "confirm_after_s": int,
                               "trial_watchdog_s": int, "timeout_s": int, "wifi_timeout_s": int}


def _behaviour(r: _Reader, entry: _Map, where: str, board: Board
               ) -> tuple[tuple[str, int | bool], ...]:
    """The profile's board settings, checked together by BoardConfig's own rules and against
    what the board's firmware can do (WDT_LONGEST_MS)."""
    from tools.board_files import BoardConfig, BoardFilesError

    chosen: dict[str, int | bool] = {}
    for key, kind in _BEHAVIOUR.items():
        if key in entry:
            chosen[key] = (r.field(entry, key, bool, where=where) if kind is bool
                           else _integer(r, entry, key, where=where))
    try:
        config = BoardConfig(device_id="-", server="http://-", **chosen)  # type: ignore[arg-type]
        config.check_behaviour()
    except BoardFilesError as err:
        named = [k for k in chosen if k in str(err)] or list(chosen)
        raise r.fail(entry.key_lines[named[0]], f"{where}: {err}") from None
    seconds = int(chosen.get("trial_watchdog_s", 0))
    longest, source = WDT_LONGEST_MS.get(board.chip, (0, ""))
    if longest and seconds * 1000 > longest:
        raise r.fail(entry.key_lines["trial_watchdog_s"],
                     f"{where}: trial_watchdog_s {seconds} is longer than board "
                     f"{board.name!r}'s machine.WDT takes ({longest} ms at most, {source}; "
                     f"docs/board.md, Platforms): the board would run without one; "
                     f"leave trial_watchdog_s out or shorten it")
    return tuple(chosen.items())


def romfs_method_problem(board: Board, method: str, romfs_offset: int | None) -> str | None:
    """Why `client: romfs` cannot be provisioned on `board` with `method`, or None when it can.

    Shared by fleet.yaml validation and `ota provision --method`, so both refuse alike.
    """
    if method == "mpremote" and board.chip != "unix":
        return (f"client romfs needs the image method on board {board.name!r}: the ROMFS "
                f"partition is flashed with esptool (method: image, romfs_offset), and the "
                f"mpremote method writes only the filesystem")
    if method == "image" and romfs_offset is None:
        return ("client romfs with the image method needs romfs_offset (where the firmware's "
                "ROMFS partition starts)")
    return None


def _client_layout(r: _Reader, entry: _Map, where: str, board: Board, method: str,
                   mpy: bool) -> tuple[ClientLayout, int | None]:
    """The profile's `client` and `romfs_offset`, checked against its board and method."""
    client = r.field(entry, "client", str, default="files", where=where)
    line = entry.key_lines.get("client", entry.line)
    if client not in CLIENT_LAYOUTS:
        raise r.fail(line, f"{where}: client must be one of {', '.join(CLIENT_LAYOUTS)}, "
                           f"not {client!r}")
    offset = None
    if "romfs_offset" in entry:
        offset_line = entry.key_lines["romfs_offset"]
        if client != "romfs" or method != "image":
            raise r.fail(offset_line, f"{where}: romfs_offset is only used with client: romfs "
                                      f"and method: image")
        offset = _integer(r, entry, "romfs_offset", where=where)
        if offset % 4096:
            raise r.fail(offset_line, f"{where}: romfs_offset must be a multiple of 4096")
        if offset <= board.firmware_offset or (board.flash_size and offset >= board.flash_size):
            raise r.fail(offset_line, f"{where}: romfs_offset {offset:#x} must lie after the "
                                      f"firmware offset and inside the flash of board "
                                      f"{board.name!r}")
        if board.fs_offset <= offset < board.fs_offset + board.fs_size:
            raise r.fail(offset_line, f"{where}: romfs_offset {offset:#x} is inside the fs "
                                      f"partition of board {board.name!r}")
    if client == "romfs":
        if not mpy:
            raise r.fail(entry.key_lines["mpy"], f"{where}: client romfs always ships the "
                                                 f"client as .mpy; drop mpy: false")
        problem = romfs_method_problem(board, method, offset)
        if problem is not None:
            raise r.fail(line, f"{where}: {problem}")
    return client, offset


def _bound_app(r: _Reader, profile: _Map, where: str) -> str | None:
    """`app: NAME`: the boards take releases of NAME only, and leave with no app installed."""
    name = profile.get("app")
    if not isinstance(name, str):
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise r.fail(profile.key_lines["app"], f"{where}: app {name!r} is not an app name "
                                               f"([A-Za-z0-9._-], 1..64)")
    return name


def _first_app(r: _Reader, profile: _Map, where: str) -> FirstApp | None:
    if profile.get("app") is None or isinstance(profile.get("app"), str):
        return None
    if not isinstance(profile["app"], _Map):
        raise r.fail(profile.key_lines["app"], f"{where}: app must be an app name or a "
                                               f"mapping {{dir, name, version, ...}}")
    entry = r.mapping(profile, "app")
    where = f"{where}: app"
    r.only(entry, ("dir", "name", "version", "sequence", "entry"), where=where)
    version = r.field(entry, "version", str, where=where)
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise r.fail(entry.key_lines["version"], f"{where}: version must be MAJOR.MINOR.PATCH")
    sequence = _integer(r, entry, "sequence", where=where, default=1)
    if sequence < 1:
        raise r.fail(entry.key_lines["sequence"], f"{where}: sequence starts at 1")
    entry_module = r.field(entry, "entry", str, default="app_main", where=where)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", entry_module):
        raise r.fail(entry.key_lines["entry"], f"{where}: entry must be a module name")
    name = r.field(entry, "name", str, where=where)
    if not _NAME.match(name):
        raise r.fail(entry.key_lines["name"], f"{where}: name must match {_NAME.pattern}")
    return FirstApp(directory=r.relative(r.field(entry, "dir", str, where=where)), name=name,
                    version=version, sequence=sequence, entry=entry_module)


def parse_fleet(text: str, path: Path) -> Fleet:
    """Parse fleet.yaml text; `path` is used in messages and to resolve relative paths.

    Raises FleetError naming the line of the first problem.
    """
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except FleetError as err:
        raise FleetError(f"{path}:{str(err).removeprefix('line ')}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        line = mark.line + 1 if mark else 0
        raise FleetError(f"{path}:{line}: not valid YAML: {err.problem}") from None
    except yaml.YAMLError as err:
        raise FleetError(f"{path}: not valid YAML: {err}") from None
    r = _Reader(path)
    if not isinstance(doc, _Map):
        raise FleetError(f"{path}:1: fleet.yaml must be a mapping of sections")
    r.only(doc, ("version", "server", "channels", "groups", "rollout", "wifi", "boards",
                 "provisioning"), where="fleet")
    version = r.field(doc, "version", int, where="fleet")
    if version != SUPPORTED_VERSION:
        raise r.fail(doc.key_lines["version"],
                     f"fleet: version {version} is not supported (this tool reads "
                     f"{SUPPORTED_VERSION})")
    server = _server(r, doc)
    channels = _channels(r, doc)
    groups = _groups(r, doc)
    rollout = _rollout(r, doc, groups)
    wifi = _wifi(r, doc)
    boards = _boards(r, doc)
    provisioning = _provisioning(r, doc, server, boards, wifi, channels)
    return Fleet(path=path, server=server, channels=channels, groups=groups, rollout=rollout,
                 wifi=wifi, boards=boards, provisioning=provisioning)


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet.yaml file. Raises FleetError (with file:line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise FleetError(f"{path}: cannot read: {err.strerror}") from None
    return parse_fleet(text, path)
