"""`make demo`: the whole chain on embedded defaults, on this machine, with nothing faked.

Keys are created, a private CA for the server (`ota tls init`), `ota serve` runs on 127.0.0.1
over https with SQLite and a blob directory (boards verify its certificate against the CA
pinned at provisioning), three virtual
boards are provisioned through real mpremote with app 1.0.0 (the third with its OTA client in a
ROMFS partition, memory-mapped, instead of on the filesystem, and booting on the 32-bit build of
the unix port, the boards' word size, in a 40 KB heap: D1's 32 KB and what TLS takes), they
boot and check in, release
1.1.0 is published and rolled out, the boards pull it, verify it, swap, boot it on trial and
confirm it. Then a bad release, 1.2.0, crashes on start: the first two boards roll back on
their own, the rollout pauses itself, and the third board is never offered it. The fleet is
printed, and the deployment history of a board that rolled back, with the app's exception
as the reason. Every command names releases by version (the server assigns sequences);
everything started here is stopped at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

from rich.console import Console

from tools.cli import main as ota
from tools.local_server import LocalServer
from tools.micropython import find_micropython_32bit
from tools.virtual_board import VirtualBoard

DEMO_DIR = Path(os.environ.get("MPOTA_DEMO_DIR", "demo-data")).resolve()
BOARDS = 3
# The last board's heap: D1, 32 KB, is the update over http (docs/board.md, Memory budget);
# over https the TLS objects (the context, the socket's mbedtls state) are in the heap too:
# the demo's update needs 36 KB there.
SMALL_BOARD_HEAP = "40k"
console = Console()

_APP_MAIN = """\
import sensor


def main():
    print("demo app", VERSION, "reading", sensor.read())


VERSION = "{version}"
"""
_SENSOR = {
    "1.0.0": "def read():\n    return 21\n",
    "1.1.0": "def read():\n    # calibrated\n    return 21 + 0.5\n",
    "1.2.0": "def read():\n    raise OSError('sensor bus not found')\n",
}
# Pause when more than 20% of the results are failures, from the second result on.
_CAREFUL_POLICY = {"stages": [{"percent": 100}], "failure_threshold": 0.2, "min_results": 2}
_README = "The demo app: app_main.py is the entry, sensor.py its one module.\n"


def _step(text: str) -> None:
    console.rule(f"[bold]{text}")


def _run(*args: str) -> None:
    console.print(f"[dim]$ ota {' '.join(args)}")
    status = ota(list(args))
    if status != 0:
        raise SystemExit(f"demo: `ota {args[0]}` failed with status {status}")


def _write_app(version: str) -> Path:
    app = DEMO_DIR / "apps" / version / "demo"
    app.mkdir(parents=True)
    (app / "app_main.py").write_text(_APP_MAIN.format(version=version))
    (app / "sensor.py").write_text(_SENSOR[version])
    (app / "README.txt").write_text(_README)
    return app


def _write_fleet(server: LocalServer, first_app: Path) -> Path:
    fleet = DEMO_DIR / "fleet.yaml"
    fleet.write_text(f"""\
version: 1
server:
  url: {server.url}
  publisher_token_env: MPOTA_TOKEN
  root: {server.root_json}
  ca: {server.ca_path}
channels:
  stable: {{}}
rollout:
  stages: [100]
wifi:
  demo:
    ssid: mpota-demo
    password_env: MPOTA_DEMO_WIFI
boards:
  unix:
    chip: unix
provisioning:
  demo:
    board: unix
    wifi: demo
    channel: stable
    tags: [demo]
    poll_interval_s: 60
    app: {{dir: {first_app}, name: demo, version: 1.0.0, sequence: 1}}
  demo-romfs:
    board: unix
    wifi: demo
    channel: stable
    tags: [demo]
    poll_interval_s: 60
    client: romfs
    app: {{dir: {first_app}, name: demo, version: 1.0.0, sequence: 1}}
""")
    return fleet


def _boot_all(boards: list[Path], boots: int) -> None:
    for flash in boards:
        small = flash == boards[-1]
        result = _board(flash, small).run(max_boots=boots, timeout=60)
        lines = [line for line in result.output.splitlines() if line.strip()]
        where = f" (32-bit port, {SMALL_BOARD_HEAP} heap)" if small else ""
        console.print(f"[cyan]{flash.name}[/]{where}: {len(result.boots)} boot(s), "
                      f"ended {result.boots[-1].ended}")
        for line in lines[-6:]:
            console.print(f"    {line}")


def _board(flash: Path, small: bool) -> VirtualBoard:
    if small:  # 32-bit, as an ESP32 or RP2, with a small board's heap
        return VirtualBoard(flash, micropython=find_micropython_32bit(),
                            heapsize=SMALL_BOARD_HEAP)
    return VirtualBoard(flash)


def demo() -> None:
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    # The demo's Wi-Fi password is a secret like any other: by environment, never printed.
    os.environ.setdefault("MPOTA_DEMO_WIFI", secrets.token_urlsafe(12))

    _step("1. Keys: an offline root key signs root metadata that trusts a release key")
    keys = DEMO_DIR / "keys"
    _run("keys", "init", str(keys))

    _step("2. A private CA for the server's https; boards will pin it at provisioning")
    tls = DEMO_DIR / "tls"
    _run("tls", "init", str(tls), "--host", "127.0.0.1")

    _step("3. The server: ota serve on 127.0.0.1 over https, SQLite + blob directory")
    with LocalServer(DEMO_DIR / "server", keys / "root.json", tls_dir=tls) as server:
        os.environ["MPOTA_SERVER"] = server.url
        os.environ["MPOTA_TOKEN"] = server.token
        os.environ["MPOTA_CA"] = str(tls / "ca.pem")  # publisher commands verify it too
        console.print(f"serving at {server.url} (data in {server.data_dir})")

        _step(f"4. The station provisions {BOARDS} virtual boards with app 1.0.0 and the CA; the "
              "last one "
              "gets its OTA client as a ROMFS image (bytecode runs from flash, not the heap) "
              f"and boots on the 32-bit unix port in a {SMALL_BOARD_HEAP} heap")
        first = _write_app("1.0.0")
        fleet = _write_fleet(server, first)
        boards = [DEMO_DIR / "boards" / f"board{n}" for n in range(1, BOARDS + 1)]
        for profile, flashes in (("demo", boards[:-1]), ("demo-romfs", boards[-1:])):
            args = ["provision", "--fleet", str(fleet), "--profile", profile,
                    "--log", str(DEMO_DIR / "station-log.jsonl"), "--station", "demo-station"]
            for flash in flashes:
                flash.mkdir(parents=True)
                args += ["--virtual", str(flash)]
            _run(*args)

        _step("5. The boards boot 1.0.0 and check in: nothing new yet")
        _boot_all(boards, boots=1)

        _step("6. Publish 1.1.0: build, sign with the release key, upload, roll out to 100%")
        second = _write_app("1.1.0")
        _run("publish", str(second), "--version", "1.1.0", "--app", "demo",
             "--board", "unix", "--fleet", str(fleet), "--key", str(keys / "release.key"),
             "--deflate", "--channel", "stable", "--percent", "100")

        _step("7. The boards check in, verify, fetch the changed file in one signed request "
              "(GET /v1/device/pack), swap, confirm")
        _boot_all(boards, boots=4)
        _run("rollout", "status", "stable")

        _step("8. A bad release: 1.2.0 crashes at start; the rollout pauses after 2 failures")
        bad = _write_app("1.2.0")
        policy = DEMO_DIR / "careful-policy.json"
        policy.write_text(json.dumps(_CAREFUL_POLICY))
        _run("publish", str(bad), "--version", "1.2.0", "--app", "demo", "--board", "unix",
             "--fleet", str(fleet), "--key", str(keys / "release.key"), "--deflate",
             "--channel", "stable", "--policy", str(policy))
        # 1 boot to update, 3 trial boots that crash, 1 boot back on 1.1.0 that reports it.
        _boot_all(boards, boots=8)

        _step("9. The fleet, and why a board rolled back: the app's own exception")
        _run("rollout", "status", "stable")
        _run("devices", "list")
        rolled = [d["device_id"] for d in server.client().list_devices()
                  if d.get("last_status") == "rolled_back"]
        if rolled:
            _run("devices", "show", rolled[0])
    console.print("[green]demo done: server stopped; everything is in", DEMO_DIR)


if __name__ == "__main__":
    try:
        demo()
    except KeyboardInterrupt:
        sys.exit(130)
