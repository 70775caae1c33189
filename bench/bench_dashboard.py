"""Dashboard benchmark: render time of the fleet page and the first board-table page.

A data directory gets 100,000 boards (written straight into SQLite, with the statuses, versions
and channels of a real fleet: most seen lately, some silent, some never seen, some failing,
some revoked) and 50 signed releases (published through the API); then `ota serve`'s app
runs in this process on 127.0.0.1 and a logged-in session asks for each page 20 times.

UI_fleet_ms   median time of GET /ui/fleet (counts by version, channel and status)
UI_boards_ms  median time of GET /ui/boards (the first page of 50, with the match count)
UI_boards_filtered_ms  the same with ?channel=beta&status=silent (the slowest filter kind)

    python bench/bench_dashboard.py [--boards N]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from server_support import SQLITE, FleetKeys, make_bundle, new_data_dir  # noqa: E402

from ota_server.rollout import bucket_of  # noqa: E402
from ota_server.storage.sqlite import SqliteStore  # noqa: E402

ROUNDS = 20
RELEASES = 50
_POINT = b"\x04" + bytes(64)  # never verified here: these boards only fill the tables


async def fill_boards(db: Path, count: int, now: int) -> None:
    """`count` boards in one transaction, spread as a fleet is."""
    rng = random.Random(7)
    store = SqliteStore(db)
    rows = []
    for i in range(count):
        device_id = f"board-{i:06d}"
        roll = rng.random()
        last_seen: int | None = now - rng.randrange(0, 3000)
        status, revoked = "confirmed", None
        if roll < 0.03:
            last_seen = None
        elif roll < 0.08:
            last_seen = now - rng.randrange(8000, 90 * 86400)
        elif roll < 0.10:
            status = "rolled_back"
        elif roll < 0.11:
            revoked = now - 1000
        version = f"1.{rng.randrange(0, 5)}.0"
        rows.append((device_id, _POINT, "esp32", json.dumps([f"site-{i % 40}"]),
                     "beta" if i % 10 == 0 else "stable", bucket_of(device_id), 5, now - 86400,
                     revoked, "greenhouse", version, 10, 1, "1.25.0", 40000, "a", last_seen,
                     status))
    db_conn = store._db  # the bench writes the rows as the server would, in one go
    db_conn.execute("BEGIN")
    db_conn.executemany(
        "INSERT INTO devices (device_id, public_key, board, tags, channel, bucket, counter, "
        "created, revoked, app, version, sequence, root_version, micropython, mem_free, slot, "
        "last_seen, last_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows)
    db_conn.execute("COMMIT")
    await store.close()


async def measure(boards: int) -> dict[str, Any]:
    from aiohttp.test_utils import TestClient, TestServer

    from ota_server.app import create_app

    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        work = Path(tmp)
        keys = FleetKeys.create(work)
        settings, token = await new_data_dir(work, SQLITE)
        settings = replace(settings, root_path=keys.root_path)
        started = time.perf_counter()
        await fill_boards(settings.db_path, boards, int(time.time()))
        fill_s = time.perf_counter() - started
        client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
        await client.start_server()
        try:
            bearer = {"Authorization": f"Bearer {token}"}
            for n in range(1, RELEASES + 1):
                bundle = make_bundle(work, {"app_main.py": f"v{n}\n".encode()},
                                     version=f"2.{n}.0", sequence=n, key=keys.release_key,
                                     app="greenhouse", boards=("esp32",))
                for blob in (bundle / "blobs").iterdir():
                    resp = await client.put(f"/v1/blobs/{blob.name}", data=blob.read_bytes(),
                                            headers=bearer)
                    assert resp.status in (200, 201)
                resp = await client.post("/v1/releases", headers=bearer,
                                         data=(bundle / "manifest.dsse.json").read_bytes())
                assert resp.status in (200, 201), await resp.text()
            resp = await client.post("/v1/channels/stable/rollout", headers=bearer,
                                     json={"app": "greenhouse", "sequence": RELEASES,
                                           "percent": 50})
            assert resp.status == 201, await resp.text()
            page = await client.get("/ui/login")
            nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text())
            assert nonce is not None
            resp = await client.post("/ui/login", data={"nonce": nonce.group(1),
                                                        "token": token},
                                     allow_redirects=False)
            assert resp.status == 303
            figures: dict[str, Any] = {}
            for figure, path, expect in (
                    ("UI_fleet_ms", "/ui/fleet", f"{boards}</span> boards"),
                    ("UI_boards_ms", "/ui/boards", "board-000049"),
                    ("UI_boards_filtered_ms", "/ui/boards?channel=beta&status=silent",
                     "boards match")):
                times = []
                for _ in range(ROUNDS):
                    began = time.perf_counter()
                    resp = await client.get(path)
                    text = await resp.text()
                    times.append((time.perf_counter() - began) * 1000)
                    assert resp.status == 200 and expect in text, (path, resp.status)
                figures[figure] = round(statistics.median(times), 1)
                print(f"{figure}: median {figures[figure]} ms, max {max(times):.1f} ms "
                      f"({ROUNDS} rounds)")
        finally:
            await client.close()
    print(f"({boards} boards written in {fill_s:.1f} s, {RELEASES} releases)")
    return {**figures, "boards": boards, "releases": RELEASES, "rounds": ROUNDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.boards))))


if __name__ == "__main__":
    main()
