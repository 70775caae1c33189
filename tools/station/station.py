"""The station: provision every target at once, one process per port, and log each board.

Why processes: esptool's logger (and its serial state) is process-wide, and a board that hangs
or crashes its worker must not take the others with it. The parent only starts workers, shows
their events, writes the station log and sums up; each worker runs `BoardProvisioner` for one
port from start to finish and sends back one `BoardRecord`.

Per board, in order (DESIGN.md "Provisioning station", docs/provisioning.md):
identify -> firmware (MicroPython at or above the floor: the image to flash, or what the board
runs; then flash the image) -> [boot it, look for a key already on the board] -> check the
server for an existing identity -> generate the key -> build the files -> write and verify
them -> register with the server -> reset the board.
Registration comes only after the write verified; a failure after registration revokes it.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.board_files import KEY_PATH, InitialApp, legacy_path
from tools.fleet import ProvisioningProfile
from tools.station.firmware import check_firmware_image
from tools.station.log import BoardRecord, StationLog
from tools.station.secrets import Redactor, Secret
from tools.station.targets import Target

Event = tuple[str, str, Any]  # (kind, target label, payload)
EventSink = Callable[[str, Any], None]

_INTERRUPT_GRACE_S = 10.0  # after Ctrl-C, how long workers get to revoke and report

# Every step a board can go through, in order; a record's `steps` holds the ones it went through.
STEPS = ("identify", "firmware", "boot", "inspect", "check", "key", "files", "write", "register",
         "reset")


@dataclass(frozen=True)
class StationJob:
    """Everything a worker needs; pickled once per worker (secrets included, over a pipe)."""

    station: str
    operator: str
    profile: ProvisioningProfile
    server_url: str
    publisher_token: Secret
    wifi_password: Secret | None
    trust_json: bytes
    # DER of the CA boards trust for an https server (tools.tls_ca.ca_der); None for http.
    server_ca: bytes | None = None
    firmware: bytes | None = None
    app: InitialApp | None = None  # the first app, in slot a (tools.board_files.InitialApp)
    reprovision: bool = False
    esptool_before: str = "default-reset"
    factory_image_dir: Path | None = None
    # "module:function" called first in every worker, e.g. to register a pyserial URL handler.
    worker_setup: tuple[str, ...] = ()
    # Virtual boards only: cut the board's power before this filesystem mutation, per label.
    virtual_cut_at: dict[str, int] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.profile.method

    def redactor(self) -> Redactor:
        values = [self.publisher_token.reveal()]
        if self.wifi_password is not None:
            values.append(self.wifi_password.reveal())
        return Redactor(values)


class StepFailed(RuntimeError):
    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


# -- the worker ---------------------------------------------------------------------------------


class BoardProvisioner:
    """Provision the one board on `target`; every outcome ends as a BoardRecord."""

    def __init__(self, job: StationJob, target: Target, emit: EventSink) -> None:
        self.job = job
        self.target = target
        self.emit = emit
        self.redact = job.redactor()
        self.record = BoardRecord(
            station=job.station, operator=job.operator, port=target.label, method=job.method,
            profile=job.profile.name, client=job.profile.client,
            firmware_sha256=hashlib.sha256(job.firmware).hexdigest() if job.firmware else None,
        )
        self._api: Any = None
        self._current_step = "start"

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.time()
        self._current_step = name
        self.emit("step", name)
        try:
            yield
        except StepFailed:
            raise
        except Exception as err:  # every failure becomes this board's failure, never the run's
            message = self.redact(f"{type(err).__name__}: {err}" if not str(err) else str(err))
            raise StepFailed(name, message) from err
        finally:
            self.record.steps[name] = [round(started, 4), round(time.time(), 4)]

    def progress(self, done: int, total: int) -> None:
        self.emit("progress", (done, total))

    def run(self) -> BoardRecord:
        self.record.started = time.time()
        try:
            with ExitStack() as stack:
                self._provision(stack)
            self.record.outcome = "provisioned"
        except StepFailed as failed:
            self.record.failed_step = failed.step
            self.record.error = str(failed)
            self._revoke_after_failure()
        except Exception as err:  # closing a connection failed: the run is not trustworthy
            self.record.outcome = "failed"
            self.record.failed_step = "close"
            self.record.error = self.redact(f"{type(err).__name__}: {err}")
            self._revoke_after_failure()
        except KeyboardInterrupt:
            self.record.outcome = "failed"
            self.record.failed_step = self._current_step
            self.record.error = "interrupted by the operator"
            self._revoke_after_failure()
        self.record.finished = time.time()
        return self.record

    # The sequence; connections opened into `stack` are closed whatever happens.
    def _provision(self, stack: ExitStack) -> None:
        from tools.station import identify

        job, board = self.job, self.job.profile.board
        esp = mp = None
        with self.step("identify"):
            if board.is_espressif:
                from tools.station.flashing import connect_esp_board

                esp = stack.enter_context(connect_esp_board(self.target.address,
                                                            before=job.esptool_before))
                who = identify.identify_esp(esp, board)
                self.record.flash_size = who.flash_size
            else:
                mp = stack.enter_context(self._micropython_board(stack))
                who = identify.identify_micropython(mp, board)
            self.record.chip, self.record.mac = who.chip, who.mac
            base_id = identify.device_id_for(board, who.hardware_id)
        merged = job.method == "image" and job.factory_image_dir is not None
        if job.firmware is not None and esp is not None:
            with self.step("firmware"):
                # The firmware floor (docs/board.md): the image's own version, before any write.
                self.record.micropython = check_firmware_image(job.firmware,
                                                               job.profile.client)
                if not merged:  # else it goes in the factory image, written in one go
                    self._check_firmware_fits(job.firmware)
                    esp.write(board.firmware_offset, job.firmware, self.progress)
        elif mp is not None:
            with self.step("firmware"):
                self._check_running_firmware(mp)
        if esp is not None and job.method == "mpremote":
            # The files go through MicroPython's REPL: leave the ROM bootloader, boot it.
            with self.step("boot"):
                esp.hard_reset()
                stack.close()
                esp = None
                mp = stack.enter_context(self._micropython_board(stack))
                self._check_running_firmware(mp)
        on_board_key = False
        if mp is not None:
            with self.step("inspect"):
                # A key already on the board is an identity too, even one the server never saw.
                on_board_key = mp.exists(KEY_PATH) or mp.exists(legacy_path(KEY_PATH))
        with self.step("check"):
            device_id = self._choose_device_id(base_id, on_board_key)
            self.record.device_id = device_id
        with self.step("key"):
            from signing.keys import generate_private_key, keyid, public_point

            key = generate_private_key()
            point = public_point(key)
            self.record.key_fingerprint = keyid(key)
        with self.step("files"):
            files = self._board_files(device_id, key)
            # The key's own bytes must never leak into a message either.
            self.redact.add(files[KEY_PATH].hex())
            rom = self._rom_image()
            writes = self._image(files, device_id, rom) if job.method == "image" else None
        with self.step("write"):
            if writes is not None:
                if esp is None:
                    raise StepFailed("write", "the image method needs an Espressif board")
                for offset, data in writes:
                    esp.write(offset, data, self.progress)
            else:
                if mp is None:
                    raise StepFailed("write", "the mpremote method needs MicroPython running "
                                              "on the board (flash it first, then re-run)")
                mp.write_files(files, self.progress)
                self._write_rom_partition(rom)
        with self.step("register"):
            self._server().register_device(device_id, point, board=board.name,
                                           channel=job.profile.channel.name,
                                           tags=list(job.profile.tags))
            self.record.registered = True
        with self.step("reset"):
            if esp is not None:
                esp.hard_reset()
            elif mp is not None:
                mp.soft_reset()

    def _check_running_firmware(self, mp: Any) -> None:
        """Record the MicroPython the board runs; FirmwareError (nothing written yet) when it
        is older than the floor."""
        from tools.station.firmware import check_board_version, version_from_implementation

        found = version_from_implementation(mp.implementation_version())
        self.record.micropython = check_board_version(self.target.label, found,
                                                      self.job.profile.client)

    @contextmanager
    def _micropython_board(self, stack: ExitStack) -> Iterator[Any]:
        from tools.station.writer_mpremote import MpremoteBoard

        port = self.target.address
        if self.target.kind == "virtual":
            port = stack.enter_context(self._serve_virtual(Path(self.target.address)))
        board = MpremoteBoard(port)
        try:
            yield board
        finally:
            board.close()

    @contextmanager
    def _serve_virtual(self, flash_dir: Path) -> Iterator[str]:
        from tools.virtual_board import VirtualBoard

        virtual = VirtualBoard(flash_dir, unique_id=virtual_unique_id(flash_dir))
        with virtual.serve_repl(cut_at=self.job.virtual_cut_at.get(self.target.label)) \
                as tcp_port:
            yield f"socket://127.0.0.1:{tcp_port}"

    def _server(self) -> Any:
        if self._api is None:
            from tools.api_client import ApiClient

            self._api = ApiClient(self.job.server_url, self.job.publisher_token.reveal(),
                                  ca=self.job.server_ca)
        return self._api

    def _choose_device_id(self, base_id: str, on_board_key: bool) -> str:
        """The id to register: `base_id`, or `base_id-rN` after earlier identities.

        The server never re-keys a device id (a revoked id stays revoked, for audit), so a
        re-provisioned board gets the next generation. An active identity (on the server or a
        key on the board) is only replaced with --reprovision, which revokes it first.
        """
        known = self._generations(base_id)
        active = [d for d, device in known if not device.get("revoked")]
        if (active or on_board_key) and not self.job.reprovision:
            where = f"server: {', '.join(active)}" if active else "a key on the board"
            raise StepFailed("check", f"board already has an identity ({where}); "
                                      f"re-run with --reprovision to replace it")
        for device_id in active:
            self._server().revoke_device(device_id)
            self.record.revoked.append(device_id)
        return base_id if not known else f"{base_id}-r{len(known) + 1}"

    def _generations(self, base_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The server's records of `base_id`, `base_id-r2`, ... up to the first unknown id.

        One lookup per generation, not a listing of the whole fleet.
        """
        from tools.api_client import ApiClientError

        found: list[tuple[str, dict[str, Any]]] = []
        while True:
            device_id = base_id if not found else f"{base_id}-r{len(found) + 1}"
            try:
                found.append((device_id, self._server().device(device_id)))
            except ApiClientError as err:
                if err.status == 404:
                    return found
                raise

    def _board_files(self, device_id: str, key: Any) -> dict[str, bytes]:
        from tools.board_files import BoardConfig, board_files

        job, profile = self.job, self.job.profile
        wifi = profile.wifi
        config = BoardConfig(
            device_id=device_id, server=job.server_url, board=profile.board.name,
            channel=profile.channel.name,
            wifi_ssid=wifi.ssid if wifi else "",
            wifi_password=job.wifi_password.reveal() if job.wifi_password else "",
            poll_every_min=max(1, profile.poll_interval_s // 60), app=profile.app_name or "",
            **dict(profile.behaviour),  # type: ignore[arg-type]
        )
        return board_files(config, key, job.trust_json, mpy=profile.mpy, app=job.app,
                           client=profile.client, server_ca=job.server_ca)

    def _rom_image(self) -> bytes | None:
        """The ROM partition image the profile's client layout needs (None: "files")."""
        if self.job.profile.client != "romfs":
            return None
        from tools.board_files import client_romfs

        return client_romfs()

    def _write_rom_partition(self, rom: bytes | None) -> None:
        """The ROM partition of a board written through mpremote. A virtual board's is the
        image beside its flash directory (this stands for flashing the partition): written,
        read back and compared; with the files layout an old one is removed, since its /rom/ota
        would shadow the client just written. A serial board's cannot be written this way."""
        if self.target.kind != "virtual":
            if rom is not None:  # fleet.yaml and `ota provision` refuse this before any board
                raise StepFailed("write", "client romfs cannot be written with the mpremote "
                                          "method: the ROMFS partition is flashed with esptool "
                                          "(method: image)")
            return
        from tools.board_files import write_rom_image
        from tools.virtual_board import rom_image_path

        flash_dir = Path(self.target.address)
        if rom is None:
            rom_image_path(flash_dir).unlink(missing_ok=True)
            return
        written = write_rom_image(flash_dir, rom)
        if hashlib.sha256(written.read_bytes()).digest() != hashlib.sha256(rom).digest():
            raise StepFailed("write", f"ROM image {written} does not match what was written")

    def _check_firmware_fits(self, firmware: bytes) -> None:
        """Raise ImageError, before anything is written, when the firmware would run into the
        filesystem or ROMFS partition (or past the flash)."""
        from tools.station.image import FlashRegion, check_regions

        profile, board = self.job.profile, self.job.profile.board
        regions = [FlashRegion("firmware", board.firmware_offset, firmware)]
        if board.fs_size:
            regions.append(FlashRegion("filesystem partition", board.fs_offset, b""))
        if profile.client == "romfs" and profile.romfs_offset is not None:
            regions.append(FlashRegion("ROMFS partition", profile.romfs_offset, b""))
        check_regions(regions, board.flash_size)

    def _image(self, files: dict[str, bytes], device_id: str, rom: bytes | None
               ) -> list[tuple[int, bytes]]:
        """What the image method writes, as (offset, bytes) in flash order: the ROMFS image at
        the profile's romfs_offset (client romfs) and the littlefs image at the partition
        offset; or all of it merged with the firmware when a factory image directory is set
        (then also saved there for a flashing jig). Raises ImageError when parts overlap."""
        from tools.station.image import (
            FlashRegion,
            PartitionGeometry,
            build_littlefs_image,
            check_regions,
            merge_factory_image,
        )

        profile = self.job.profile
        board = profile.board
        geometry = PartitionGeometry(board.fs_offset, board.fs_size, board.prog_size)
        fs_image = build_littlefs_image(files, geometry)
        romfs = None
        if rom is not None:
            if profile.romfs_offset is None:  # fleet.yaml and `ota provision` refuse this
                raise StepFailed("files", "client romfs with the image method needs "
                                          "romfs_offset in the profile")
            romfs = (profile.romfs_offset, rom)
        if self.job.factory_image_dir is None or self.job.firmware is None:
            writes = [FlashRegion("filesystem partition", board.fs_offset, fs_image)]
            if romfs is not None:
                writes.append(FlashRegion("ROMFS image", *romfs))
            # The firmware (written in its own step) is checked against too, not written again.
            firmware = [] if self.job.firmware is None else [
                FlashRegion("firmware", board.firmware_offset, self.job.firmware)]
            check_regions(writes + firmware, board.flash_size)
            return [(r.offset, r.data) for r in sorted(writes, key=lambda r: r.offset)]
        offset, merged = merge_factory_image(board.chip, self.job.firmware,
                                             board.firmware_offset, fs_image, board.fs_offset,
                                             romfs=romfs, flash_size=board.flash_size)
        out = self.job.factory_image_dir / f"{device_id}@{offset:#x}.bin"
        # The image holds the board's private key: owner-only, like every key on disk.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(merged)
        return [(offset, merged)]

    def _revoke_after_failure(self) -> None:
        if not self.record.registered or self.record.device_id is None:
            return
        try:
            self._server().revoke_device(self.record.device_id)
            self.record.revoked.append(self.record.device_id)
            self.record.registered = False
        except Exception as err:
            self.record.error = f"{self.record.error}; revoking it failed too: " + self.redact(
                str(err))


def virtual_unique_id(flash_dir: Path) -> bytes:
    """A virtual board has no silicon: its serial number is a function of where its flash
    lives, so the same directory is always the same board (6 bytes, like an ESP32 MAC)."""
    return hashlib.sha256(str(flash_dir.resolve()).encode()).digest()[:6]


def _worker_main(job: StationJob, target: Target, events: Any) -> None:
    """Entry point of a worker process: provision one board, send events and one result."""

    def emit(kind: str, payload: Any) -> None:
        events.put((kind, target.label, payload))

    try:
        for hook in job.worker_setup:
            module, _, function = hook.partition(":")
            getattr(importlib.import_module(module), function)()
        record = BoardProvisioner(job, target, emit).run()
    except BaseException as err:  # the record must reach the parent whatever happened
        record = BoardRecord(station=job.station, operator=job.operator, port=target.label,
                             method=job.method, profile=job.profile.name,
                             client=job.profile.client,
                             error=job.redactor()(f"station worker crashed: {err!r}"),
                             failed_step="worker")
        traceback.print_exc()
    events.put(("result", target.label, record.to_json()))


# -- the parent ---------------------------------------------------------------------------------


class StationView:
    """What the operator sees; tools.station.view.LiveView implements it with rich."""

    def started(self, labels: list[str]) -> None:
        pass

    def step(self, label: str, step: str) -> None:
        pass

    def progress(self, label: str, done: int, total: int) -> None:
        pass

    def finished(self, record: BoardRecord) -> None:
        pass

    def summary(self, records: list[BoardRecord]) -> None:
        pass


@dataclass
class Station:
    """Provision `targets` in parallel and append one log record per board to `log`."""

    job: StationJob
    log: StationLog
    view: StationView = field(default_factory=StationView)
    timeout_s: float = 600.0  # per run: a hung board is reported failed, never waited on forever
    _dead_since: dict[str, float] = field(default_factory=dict)

    def run(self, targets: list[Target]) -> list[BoardRecord]:
        ctx = multiprocessing.get_context("spawn")
        events = ctx.Queue()
        workers = {
            t.label: ctx.Process(target=_worker_main, args=(self.job, t, events),
                                 name=f"station-{t.label}", daemon=True)
            for t in targets
        }
        self.view.started(list(workers))
        for worker in workers.values():
            worker.start()
        results: dict[str, BoardRecord] = {}
        try:
            self._collect(events, workers, results, time.monotonic() + self.timeout_s)
        except KeyboardInterrupt:
            # The workers got the same Ctrl-C: they revoke what they registered and report.
            # Log those reports (briefly) so the log matches the server, then stop.
            self._collect(events, workers, results, time.monotonic() + _INTERRUPT_GRACE_S)
            raise
        finally:
            for worker in workers.values():
                worker.join(timeout=5)
                if worker.is_alive():
                    worker.terminate()
        records = [results[label] for label in workers]
        self.view.summary(records)
        return records

    def _collect(self, events: Any, workers: dict[str, Any], results: dict[str, BoardRecord],
                 deadline: float) -> None:
        """Show events and log results until every worker reported (or was reaped)."""
        while len(results) < len(workers):
            try:
                kind, label, payload = events.get(timeout=0.2)
            except queue.Empty:
                self._reap(workers, results, deadline)
                continue
            if kind == "step":
                self.view.step(label, payload)
            elif kind == "progress":
                self.view.progress(label, *payload)
            elif kind == "result" and label not in results:
                self._finish(results, BoardRecord.from_json(payload))

    def _finish(self, results: dict[str, BoardRecord], record: BoardRecord) -> None:
        results[record.port] = record
        self.log.append(record)
        self.view.finished(record)

    def _reap(self, workers: dict[str, Any], results: dict[str, BoardRecord],
              deadline: float) -> None:
        """A worker that died or ran out of time without a result is a failed board."""
        timed_out = time.monotonic() > deadline
        for label, worker in workers.items():
            if label in results or (worker.is_alive() and not timed_out):
                continue
            if worker.is_alive():
                worker.terminate()
                why = f"no result within {self.timeout_s:.0f} s; worker stopped"
            else:
                # Its result may still be in the pipe: give the queue a moment before judging.
                since = self._dead_since.setdefault(label, time.monotonic())
                if time.monotonic() - since < 2.0:
                    continue
                why = f"worker exited ({worker.exitcode}) without a result"
            self._finish(results, BoardRecord(
                station=self.job.station, operator=self.job.operator, port=label,
                method=self.job.method, profile=self.job.profile.name,
                client=self.job.profile.client, error=why,
                failed_step="worker", started=time.time(), finished=time.time()))
