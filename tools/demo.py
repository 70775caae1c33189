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
as the reason. Then the rest of the chain: 1.3.0 is installed offline (`ota install`, over
the board's REPL as over USB) onto a board that reaches no server, and the server learns it at
the board's next check-in; the bad 1.2.0 is yanked and no board is offered it again; a viewer
with a `read` token lists channels and releases but is refused a pause, and the audit log
says who did what; the dashboard's address and the file holding the viewer's token (0600,
never printed) are printed. Every command names releases by version (the server assigns
sequences); everything started here is stopped at the end (`MPOTA_DEMO_KEEP=1`: the server
is kept running for the dashboard until Ctrl-C).

`make demo-cluster` (`python -m tools.demo --cluster`) tells the same story through the
scale-out stack instead of one embedded server (tools/cluster/stack.py): PostgreSQL and
SeaweedFS's S3 gateway, `ota db migrate`, two `ota serve` replicas on them and nginx in front,
terminating https and balancing over the replicas; the boards and every command talk to nginx.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from tools.cli import main as ota
from tools.cluster.stack import Cluster
from tools.local_server import LocalServer
from tools.micropython import find_micropython_32bit
from tools.station.image import BLOCK_SIZE
from tools.virtual_board import VirtualBoard
from tools.virtual_board.flash import ESP32_VFS, default_flash_kind, flash_image_path

DEMO_DIR = Path(os.environ.get("MPOTA_DEMO_DIR", "demo-data")).resolve()
# Set to 1: keep the server running at the end (for the dashboard) until Ctrl-C.
KEEP_ENV = "MPOTA_DEMO_KEEP"
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
    "1.3.0": "def read():\n    # recalibrated\n    return 21 + 0.25\n",
}
# Pause when more than 20% of the results are failures, from the second result on.
_CAREFUL_POLICY = {"stages": [{"percent": 100}], "failure_threshold": 0.2, "min_results": 2}
_FLASH_TEXT = {
    "lfs2": "MicroPython's own littlefs v2 (vfs.VfsLfs2) on a flash block device",
    "fat": "MicroPython's own FAT (vfs.VfsFat) on a flash block device",
    "dir": "a host directory (MPOTA_VB_FLASH=dir), not a flash image",
}
_README = "The demo app: app_main.py is the entry, sensor.py its one module.\n"
CLUSTER_REPLICAS = 2
DEMO_WORKERS = 2  # `ota serve --workers`: the embedded server on two processes
# What the boards and commands talk to: one embedded server, or nginx in front of replicas.
Server = LocalServer | Cluster


def _step(text: str) -> None:
    console.rule(f"[bold]{text}")


def _run(*args: str) -> None:
    console.print(f"[dim]$ ota {' '.join(args)}")
    status = ota(list(args))
    if status != 0:
        raise SystemExit(f"demo: `ota {args[0]}` failed with status {status}")


def _run_refused(*args: str) -> None:
    """Run `ota ARGS`, which must fail, and print its error message (its stderr)."""
    console.print(f"[dim]$ ota {' '.join(args)}")
    refusal = io.StringIO()
    with contextlib.redirect_stderr(refusal):
        status = ota(list(args))
    if status == 0:
        raise SystemExit(f"demo: `ota {args[0]}` was expected to be refused and was not")
    console.print(f"[red]{escape(refusal.getvalue().strip())}[/] (exit status {status})")


def _create_token_file(name: str, scope: str, path: Path) -> None:
    """`ota tokens create NAME --scope SCOPE`, its output (the token) going only to `path`,
    created 0600: the token is never printed."""
    console.print(f"[dim]$ (umask 077; ota tokens create {name} --scope {scope} > {path})")
    created = io.StringIO()
    with contextlib.redirect_stdout(created):
        status = ota(["tokens", "create", name, "--scope", scope])
    if status != 0:
        raise SystemExit(f"demo: `ota tokens create` failed with status {status}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(created.getvalue())


def _write_app(version: str) -> Path:
    app = DEMO_DIR / "apps" / version / "demo"
    app.mkdir(parents=True)
    (app / "app_main.py").write_text(_APP_MAIN.format(version=version))
    (app / "sensor.py").write_text(_SENSOR[version])
    (app / "README.txt").write_text(_README)
    return app


def _write_fleet(server: Server, first_app: Path) -> Path:
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


def _server(keys: Path, tls: Path, cluster: bool) -> Server:
    """The embedded `ota serve` over https, or the scale-out stack with nginx on https."""
    if not cluster:
        # One worker process per core of a small server (docs/operations.md, "Workers").
        return LocalServer(DEMO_DIR / "server", keys / "root.json", tls_dir=tls,
                           extra_args=["--workers", str(DEMO_WORKERS)])
    return Cluster(DEMO_DIR / "server", keys / "root.json", replicas=CLUSTER_REPLICAS,
                   tls_dir=tls)


def demo(cluster: bool = False) -> None:
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

    if cluster:
        _step(f"3. The cluster on 127.0.0.1: PostgreSQL, SeaweedFS (S3), `ota db migrate`, "
              f"{CLUSTER_REPLICAS} ota serve replicas behind nginx (https)")
    else:
        _step(f"3. The server: ota serve on 127.0.0.1 over https, SQLite + blobs, "
              f"{DEMO_WORKERS} workers")
    with _server(keys, tls, cluster) as server:
        os.environ["MPOTA_SERVER"] = server.url
        os.environ["MPOTA_TOKEN"] = server.token
        os.environ["MPOTA_CA"] = str(tls / "ca.pem")  # publisher commands verify it too
        console.print(f"serving at {server.url} (data in {server.data_dir})")
        if isinstance(server, Cluster):
            console.print(f"nginx balances over {', '.join(r.url for r in server.replicas)}; "
                          "metadata in PostgreSQL, blobs in the S3 bucket "
                          f"{server.blobs_url.split('?', 1)[0]}")

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
        kind = default_flash_kind()
        image = ("" if kind == "dir" else
                 f": an image file per board, {ESP32_VFS.size // 1024 // 1024} MiB in "
                 f"{ESP32_VFS.block_count} erase blocks of {BLOCK_SIZE} bytes "
                 f"({flash_image_path(boards[0]).relative_to(DEMO_DIR)}, ...)")
        console.print(f"the virtual boards' flash: {_FLASH_TEXT[kind]}{image}")

        _step("5. The boards boot 1.0.0 and check in: nothing new yet")
        _boot_all(boards, boots=1)

        _step("6. Publish 1.1.0: build, sign with the release key, upload, roll out to 100%")
        second = _write_app("1.1.0")
        _run("publish", str(second), "--version", "1.1.0", "--app", "demo",
             "--board", "unix", "--fleet", str(fleet), "--key", str(keys / "release.key"),
             "--deflate", "--channel", "stable", "--percent", "100")

        _step("7. The boards check in, verify, fetch the changed file in one request "
              "(GET /v1/device/pack) with the download grant their offer carried (no "
              "signature, no counter: docs/protocol.md), swap, confirm")
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

        _offline_install(server, boards[0], fleet, keys)
        _yank(boards)
        viewer = _viewer()
        _dashboard(server, viewer)
    console.print("[green]demo done: " + ("cluster" if cluster else "server")
                  + " stopped; everything is in", DEMO_DIR)


def _offline_install(server: Server, board: Path, fleet: Path, keys: Path) -> None:
    """1.3.0 onto `board` over its REPL while it reaches no server; then its check-in."""
    _step(f"10. Offline install: 1.3.0 onto {board.name} over USB, no server in reach")
    fixed = _write_app("1.3.0")
    bundle = DEMO_DIR / "bundles" / "1.3.0"
    # Registered on the server (so its inventory names it) but rolled out nowhere.
    _run("publish", str(fixed), "--version", "1.3.0", "--app", "demo", "--board", "unix",
         "--fleet", str(fleet), "--key", str(keys / "release.key"), "--out", str(bundle))
    server.stop()
    console.print(f"server stopped: {board.name} checks in to nothing while it is installed")
    _run("install", str(bundle), "--virtual", str(board))
    server.start()
    device_id = json.loads((board / "ota_id" / "config.json").read_text())["device_id"]
    console.print(f"server started again at {server.url}: {board.name} ({device_id}) checks in")
    result = _board(board, small=False).run(max_boots=1, timeout=60)
    for line in result.output.splitlines()[-3:]:
        console.print(f"    {line}")
    _run("devices", "list")


def _yank(boards: list[Path]) -> None:
    """Yank the bad 1.2.0: its paused rollout ends, and no board is ever offered it again."""
    _step("11. Yank the bad 1.2.0: no board is offered it again")
    _run("releases", "yank", "demo", "1.2.0", "--force")
    _run_refused("rollout", "start", "stable", "--app", "demo", "--version", "1.2.0",
                 "--percent", "100")
    # The last board never took 1.2.0: it checks in, and is offered nothing.
    _boot_all(boards[-1:], boots=1)


def _viewer() -> Path:
    """A `read` token for a viewer, in a 0600 file; what it may and may not do; the audit."""
    _step("12. Scopes: a read token lists, is refused a pause; the audit log")
    token_file = DEMO_DIR / "viewer.token"
    _create_token_file("viewer", "read", token_file)
    console.print(f"the viewer's token is in {token_file} (mode 0600; never printed)")
    _run("channels", "list", "--token-file", str(token_file))
    _run("releases", "list", "--token-file", str(token_file))
    _run_refused("rollout", "pause", "stable", "--token-file", str(token_file))
    _run("audit", "list", "--limit", "5")  # the newest: the yank, the token, the refusals
    return token_file


def _dashboard(server: Server, token_file: Path) -> None:
    """Where the dashboard is and how to log in; with MPOTA_DEMO_KEEP=1, wait for Ctrl-C."""
    _step("13. The dashboard")
    console.print(f"dashboard: {server.url}/ui/ (the browser must trust {server.ca_path}); "
                  f"log in with the viewer's token from {token_file}, or a publisher token")
    if os.environ.get(KEEP_ENV) != "1":
        console.print(f"it is served while the demo runs: run `{KEEP_ENV}=1 make demo` to keep "
                      "the server running at the end, until Ctrl-C")
        return
    console.print("[bold]the server keeps running: Ctrl-C to stop it")
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the whole chain, on this machine")
    parser.add_argument("--cluster", action="store_true",
                        help="through PostgreSQL, S3 and two replicas behind nginx")
    demo(cluster=parser.parse_args(argv).cluster)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
