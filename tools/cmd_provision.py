"""`ota provision`: the factory provisioning station's command (docs/provisioning.md).

Reads the fleet and its secrets here, in the parent; the per-board work runs in
tools/station/station.py, one process per port. Exit status 1 when any board failed.
"""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path

import click

from tools.board_files import BoardFilesError, InitialApp
from tools.errors import UserError
from tools.fleet import (
    WRITE_METHODS,
    FleetError,
    ProvisioningProfile,
    https_problem,
    image_method_problem,
    load_fleet,
    romfs_method_problem,
)
from tools.station.secrets import SecretError, resolve_secret
from tools.station.targets import TargetError, collect_targets

DEFAULT_LOG = "station-log.db"


def read_server_ca(server_url: str, path: Path | None) -> bytes | None:
    """The DER of the CA boards pin for `server_url` (None for plain http without one).

    Raises UserError, before any board is touched, when an https server has no CA or the CA
    file cannot be read or is not a CA certificate.
    """
    from tools.tls_ca import CaError, ca_der

    if path is None:
        if server_url.startswith("https://"):
            raise UserError(
                f"server {server_url} is https, and boards verify its certificate against a CA "
                "they are given: set server.ca in fleet.yaml (or a profile's ca:, or --ca) to "
                "the CA's PEM or DER file; `ota tls init DIR --host NAME` makes a private one")
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"CA {path}: {err.strerror}") from None
    try:
        return ca_der(data, f"CA {path}")
    except CaError as err:
        raise UserError(str(err)) from None


def _read_trust(path: Path | None) -> bytes:
    if path is None:
        raise UserError("no trust root: set server.root in fleet.yaml or give --root ROOT.json")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"trust root {path}: {err.strerror}") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise UserError(f"trust root {path} is not JSON") from None
    if not isinstance(doc, dict) or "payloadType" not in doc or "signatures" not in doc:
        raise UserError(f"trust root {path} is not a signed root envelope (DSSE)")
    return data


def _read_first_app(profile: ProvisioningProfile) -> InitialApp | None:
    if profile.app is None:
        return None
    first = profile.app
    try:
        return InitialApp.from_dir(first.directory, first.name, first.version, first.sequence,
                                   first.entry)
    except (BoardFilesError, OSError) as err:
        raise UserError(f"profile {profile.name!r}: first app: {err}") from None


def _read_firmware(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"firmware {path}: {err.strerror}") from None


@click.command("provision")
@click.option("--fleet", "fleet_path", default="fleet.yaml", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The fleet definition.")
@click.option("--profile", required=True, help="Provisioning profile in fleet.yaml.")
@click.option("--port", "ports", multiple=True, help="Serial port (or pyserial URL); repeatable.")
@click.option("--all", "all_ports", is_flag=True, help="Every serial port that looks like a board.")
@click.option("--virtual", "virtual_dirs", multiple=True,
              help="A virtual board's flash directory; repeatable.")
@click.option("--method", type=click.Choice(WRITE_METHODS), default=None,
              help="Override the profile's write method.")
@click.option("--reprovision", is_flag=True,
              help="Replace an existing identity (its key is revoked on the server).")
@click.option("--log", "log_path", default=DEFAULT_LOG, show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Station log: .jsonl for JSON lines, anything else SQLite.")
@click.option("--station", default=socket.gethostname(), show_default=True,
              help="This station's name, for the log.")
@click.option("--operator", default=None, help="Who runs the station (default: login name).")
@click.option("--server", "server_url", default=None, help="Override the fleet's server URL.")
@click.option("--root", "root_path", default=None, type=click.Path(path_type=Path),
              help="Signed root metadata for the boards (default: server.root in fleet.yaml).")
@click.option("--ca", "ca_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="CA the boards trust for an https server, PEM or DER (default: the "
                   "profile's ca, else server.ca in fleet.yaml).")
@click.option("--firmware", "firmware_path", default=None, type=click.Path(path_type=Path),
              help="MicroPython firmware to flash first (default: the profile's).")
@click.option("--no-firmware", is_flag=True, help="Do not flash MicroPython.")
@click.option("--factory-image-dir", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="Image method: merge firmware + filesystem (+ the ROMFS image, client romfs) "
                   "into one image per board, save it here (mode 0600) and write that.")
@click.option("--before", "esptool_before", default="default-reset", show_default=True,
              type=click.Choice(["default-reset", "usb-reset", "no-reset"]),
              help="How esptool puts a board into its bootloader.")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True,
              help="Seconds before a board still running is reported failed.")
@click.option("--worker-setup", multiple=True, hidden=True,
              help="module:function run first in each worker (site serial URL handlers).")
def provision(fleet_path: Path, profile: str, ports: tuple[str, ...], all_ports: bool,
              virtual_dirs: tuple[str, ...], method: str | None, reprovision: bool,
              log_path: Path, station: str, operator: str | None, server_url: str | None,
              root_path: Path | None, ca_path: Path | None, firmware_path: Path | None,
              no_firmware: bool,
              factory_image_dir: Path | None, esptool_before: str, timeout_s: float,
              worker_setup: tuple[str, ...]) -> None:
    """Provision boards: identify, key, write files, register, log; all ports in parallel."""
    from dataclasses import replace

    from tools.station.log import StationLog
    from tools.station.station import Station, StationJob
    from tools.station.view import LiveView

    try:
        fleet = load_fleet(fleet_path)
        chosen: ProvisioningProfile = fleet.profile(profile)
        targets = collect_targets(ports, all_ports, virtual_dirs)
        token = resolve_secret(fleet.server.publisher_token, "publisher token")
        wifi = chosen.wifi
        wifi_password = resolve_secret(wifi.password, f"Wi-Fi {wifi.name!r} password") \
            if wifi else None
    except (FleetError, TargetError, SecretError) as err:
        raise UserError(str(err)) from None
    if method is not None:
        chosen = replace(chosen, method=method)
    if chosen.method == "image":
        problem = image_method_problem(chosen.board)
        if problem is not None:
            raise UserError(f"profile {chosen.name!r}: {problem}")
    problem = https_problem(chosen.board, server_url or fleet.server.url)
    if problem is not None:
        raise UserError(f"profile {chosen.name!r}: {problem}")
    if any(t.kind == "virtual" for t in targets) and chosen.board.chip != "unix":
        raise UserError(f"--virtual needs a profile for a virtual board (chip unix), not "
                        f"{chosen.board.name!r}")
    if chosen.client == "romfs":
        problem = romfs_method_problem(chosen.board, chosen.method, chosen.romfs_offset)
        if problem is None and chosen.method == "mpremote" and any(
                t.kind == "serial" for t in targets):
            problem = ("client romfs with the mpremote method works on virtual boards only: a "
                       "board's ROMFS partition is flashed with esptool (method: image)")
        if problem is not None:
            raise UserError(f"profile {chosen.name!r}: {problem}")
    firmware = None if no_firmware else _read_firmware(firmware_path or chosen.firmware)
    if factory_image_dir is not None:
        if firmware is None:
            raise UserError("--factory-image-dir needs firmware to merge")
        factory_image_dir.mkdir(parents=True, exist_ok=True)
    url = (server_url or fleet.server.url).rstrip("/")
    job = StationJob(
        station=station, operator=operator or getpass.getuser(), profile=chosen,
        server_url=url, publisher_token=token,
        wifi_password=wifi_password, trust_json=_read_trust(root_path or fleet.server.root),
        server_ca=read_server_ca(url, ca_path or chosen.ca or fleet.server.ca),
        firmware=firmware, app=_read_first_app(chosen), reprovision=reprovision,
        esptool_before=esptool_before,
        factory_image_dir=factory_image_dir, worker_setup=worker_setup,
    )
    for target in targets:  # every check passed: a virtual board's new directory is made now
        if target.kind == "virtual":
            Path(target.address).mkdir(parents=True, exist_ok=True)
    records = Station(job, StationLog(log_path), LiveView(), timeout_s=timeout_s).run(targets)
    failed = [r for r in records if r.outcome != "provisioned"]
    if failed:
        raise UserError(f"{len(failed)} of {len(records)} board(s) failed; see {log_path}")


def register(cli: click.Group) -> None:
    cli.add_command(provision)
