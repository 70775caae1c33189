"""`ota serve --workers N`: N processes serving one embedded store, and their supervisor.

One process serves check-ins on one core: at figure S3's 1,700 new connections a second the
embedded server needs 0.85-0.9 of a core of the 2-core test machine, so S3 held only when the
machine ran at its usual speed (docs/benchmarks.md). With `--workers N` the process started
becomes a supervisor that serves nothing itself:

- it takes the data directory's lock (ota_server.datadir), migrates the SQLite file, sets up
  the trust anchor (stores the first root or a rotation of `--root`), creates the download
  grants' key, and empties `blobs/tmp/` and the workers' metrics directory: everything a lone
  server does once at start, done once, before any worker runs;
- it binds the listening sockets (one per address of `--host`) and starts N worker processes
  (Python's `spawn`: a fresh interpreter, no state copied by fork) that accept on those same
  sockets: the kernel hands each new connection to one worker waiting in accept;
- it checkpoints the SQLite WAL (ota_server.storage.wal_checkpoint), which no worker does;
- it announces "Running on ..." once every worker serves, forwards SIGHUP (a TLS certificate
  reload) to every worker, starts a worker again (after RESTART_DELAY_S) when one dies, and on
  SIGTERM or SIGINT stops them all (each finishes its requests and writes what it holds
  behind, as a lone server does) before it lets the lock go.

Each worker is a whole server (ota_server.app.create_app with `worker=`) on the same SQLite
file: the store keeps its caches checked against the fleet epoch, a check-in's offer is
written before its answer, and metrics are summed over the workers at each scrape, as for
replicas on PostgreSQL (docs/operations.md, "Process-local state"). A worker holds a copy of
the lock's file descriptor, so the directory stays locked until the last of them exits, and a
worker whose supervisor is gone (killed with SIGKILL) stops on its own within
ORPHAN_CHECK_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from multiprocessing import connection, reduction
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, cast

from aiohttp import web

from ota_server.datadir import WORKERS_DIR, DataDirLock
from ota_server.settings import Settings
from ota_server.storage.wal_checkpoint import WalCheckpointer

log = logging.getLogger("ota_server")

# How long every worker may take to serve after it was started (imports, the app's start-up).
READY_TIMEOUT_S = 60.0
# How long workers may take to stop: their own shutdown (5 s for requests in flight) and the
# records they write behind, with room to spare; then they are killed.
STOP_TIMEOUT_S = 20.0
# A worker that died is started again after this, and after twice as long (up to
# MAX_RESTART_DELAY_S) each time one dies within STABLE_S of its start: a worker that cannot
# run does not spin the machine.
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STABLE_S = 10.0
# How often a worker checks that its supervisor is still there.
ORPHAN_CHECK_S = 1.0


class WorkerFailed(Exception):
    """A worker could not start; the message says which and how it ended."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled to it by multiprocessing)."""

    settings: Settings
    index: int
    log_level: int


class _Stop(Exception):
    """SIGTERM or SIGINT reached the supervisor."""


def serve_workers(settings: Settings, *, log_level: int, announce: Callable[[str], None]) -> None:
    """Run `settings.workers` workers until SIGTERM or SIGINT (module docstring).

    Raises what a lone server's start-up raises (DataDirInUse, TrustSetupError, StoreError,
    GrantKeyError), OSError when the address cannot be bound, and WorkerFailed.
    """
    lock = DataDirLock(settings.data_dir)
    lock.acquire()
    try:
        asyncio.run(_prepare(settings))
        sockets = _listen(settings.host, settings.port, settings.workers)
        checkpointer = WalCheckpointer(settings.db_path)
        try:
            pool = _Pool(settings, sockets, lock.fileno(), log_level)
            pool.run(announce)
        finally:
            checkpointer.close()
            for sock in (sock for each in sockets for sock in each):
                sock.close()
    finally:
        lock.release()


async def _prepare(settings: Settings) -> None:
    """What a lone server does once at start, done once for all the workers: the store
    migrated, the trust anchor set up (the first root or a rotation stored), the grant key
    created, `blobs/tmp/` and the workers' saved metrics emptied."""
    from ota_server.app import open_blob_store, open_metadata_store
    from ota_server.grants import GrantKey
    from ota_server.trust import TrustAnchor

    if settings.grant_key_path is not None:
        GrantKey.load_or_create(settings.grant_key_path)
    shutil.rmtree(settings.data_dir / WORKERS_DIR, ignore_errors=True)
    (settings.data_dir / WORKERS_DIR).mkdir()
    store = await open_metadata_store(settings, worker=True)
    try:
        trust = await TrustAnchor.load(store, settings.root_path)
        await trust.close()
    finally:
        await store.close()
    blobs = await open_blob_store(settings)  # clears blobs/tmp/
    await blobs.close()


def _listen(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """`count` listening sockets on every address of `host` (as asyncio's create_server binds
    them: IPv6 ones IPv6-only), all on `port` (with 0, on the port the kernel gives the
    address's first one): worker i accepts on the i-th of each address.

    They share the port with SO_REUSEPORT, so the kernel spreads new connections evenly over
    them (by a hash of the client's address and port). One socket shared by every worker
    would not: a worker woken for a connection accepts all that are queued, so at low load
    one worker took nearly all of them (tests/test_server_workers.py), and under load a
    worker that just took a burst serves it alone while another waits. A socket outlives its
    worker (the supervisor holds it), so what a dying worker leaves queued is taken by the
    worker started in its place, not refused.
    """
    from ota_server.connections import LISTEN_BACKLOG

    per_worker: list[list[socket.socket]] = [[] for _ in range(count)]
    every: list[socket.socket] = []  # all of them, closed if one cannot be bound
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            for sockets in per_worker:
                sock = socket.socket(family, kind, proto)
                every.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                if address[1] == 0:  # the kernel chose the port: the other workers' share it
                    address = (address[0], sock.getsockname()[1], *address[2:])
                sock.listen(LISTEN_BACKLOG)
                sock.setblocking(False)
                sockets.append(sock)
    except BaseException:
        for sock in every:
            sock.close()
        raise
    return per_worker


class _Pool:
    """The running workers: started, watched, started again, signalled, stopped."""

    def __init__(self, settings: Settings, sockets: Sequence[Sequence[socket.socket]],
                 lock_fd: int, log_level: int):
        self._settings = settings
        self._sockets = sockets  # worker i's: sockets[i]
        self._lock_fd = lock_fd
        self._log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._started: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._stopping = False

    def run(self, announce: Callable[[str], None]) -> None:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self._start_all()
            names = ", ".join(_url(self._settings, sock) for sock in self._sockets[0])
            announce(f"Running on {names} ({len(self._workers)} workers)")
            self._watch()
        except _Stop:
            pass
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if signum == signal.SIGHUP:
            for process in self._workers.values():
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGHUP)
            return
        if not self._stopping:  # a second Ctrl-C must not cut the workers' clean stop short
            self._stopping = True
            raise _Stop

    def _spawn(self, index: int) -> connection.Connection:
        """Start worker `index`; the end of the pipe it says it serves on."""
        reader, writer = self._context.Pipe(duplex=False)
        spec = WorkerSpec(self._settings, index, self._log_level)
        process = self._context.Process(
            target=_worker_main, name=f"ota-serve-worker-{index}",
            args=(spec, self._sockets[index], _InheritedFd(self._lock_fd), writer, os.getpid()))
        process.start()
        writer.close()
        self._workers[index] = process
        self._started[index] = time.monotonic()
        return reader

    def _start_all(self) -> None:
        """Every worker started and serving, or WorkerFailed (the started ones are stopped by
        run's clean-up)."""
        waiting = {self._spawn(index): index for index in range(self._settings.workers)}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while waiting:
            sentinels = {self._workers[index].sentinel: index for index in waiting.values()}
            left = deadline - time.monotonic()
            ready = connection.wait([*waiting, *sentinels], timeout=max(left, 0))
            if not ready:
                raise WorkerFailed(f"{len(waiting)} of {self._settings.workers} workers did "
                                   f"not start serving within {READY_TIMEOUT_S:g} s")
            for item in ready:
                if item in sentinels:
                    index = sentinels[item]
                    code = self._workers[index].exitcode
                    raise WorkerFailed(f"worker {index} exited while starting (exit code "
                                       f"{code}): see its error above")
                assert isinstance(item, connection.Connection)
                try:
                    item.recv()
                except EOFError:
                    continue  # it exited: its sentinel says so at the next wait
                waiting.pop(item)
                item.close()

    def _watch(self) -> None:
        """Start again each worker that dies, until a signal stops the supervisor."""
        while True:
            sentinels = {process.sentinel: index for index, process in self._workers.items()}
            for sentinel in connection.wait(list(sentinels)):
                index = sentinels[cast(int, sentinel)]
                process = self._workers[index]
                process.join()
                lived = time.monotonic() - self._started[index]
                delay = RESTART_DELAY_S if lived >= STABLE_S else min(
                    self._delay.get(index, RESTART_DELAY_S / 2) * 2, MAX_RESTART_DELAY_S)
                self._delay[index] = delay
                log.warning("worker %d (pid %s) exited with code %s after %.0f s; starting "
                            "another in %g s", index, process.pid, process.exitcode, lived,
                            delay)
                time.sleep(delay)
                self._spawn(index).close()  # it serves when it can; nobody waits for it

    def _stop_all(self) -> None:
        """SIGTERM to every worker, then SIGKILL to those still running after
        STOP_TIMEOUT_S."""
        for process in self._workers.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for index, process in self._workers.items():
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                log.warning("worker %d (pid %s) did not stop within %g s: killed", index,
                            process.pid, STOP_TIMEOUT_S)
                process.kill()
                process.join()


def _url(settings: Settings, sock: socket.socket) -> str:
    scheme = "https" if settings.tls_cert is not None else "http"
    host, port = sock.getsockname()[:2]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class _InheritedFd:
    """A file descriptor handed to a spawned worker as a duplicate of the same open file (so
    an flock on it is shared: the lock is held while any holder lives)."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_fd, (reduction.DupFd(self.fd),)


def _rebuild_fd(duplicate: Any) -> _InheritedFd:
    return _InheritedFd(duplicate.detach())


def _worker_main(spec: WorkerSpec, sockets: Sequence[socket.socket], lock: _InheritedFd,
                 ready: connection.Connection, supervisor: int) -> None:
    """A worker process: the whole server on the supervisor's sockets until SIGTERM/SIGINT,
    or until its supervisor is gone."""
    from ota_server import connections
    from ota_server.app import create_app
    from ota_server.logs import configure_logging

    del lock  # held open for the process's life, never used
    configure_logging(spec.settings.json_logs, spec.log_level)

    def serving(text: str) -> None:
        log.debug("worker %d: %s", spec.index, text)
        # A worker started again in place of one that died is waited for by nobody: its
        # supervisor closed the other end.
        with contextlib.suppress(OSError):
            ready.send(spec.index)
        ready.close()

    try:
        app = create_app(spec.settings, worker=spec.index)
        app.cleanup_ctx.append(_leave_with_supervisor(supervisor))
        connections.run(app, spec.settings, announce=serving, listening=sockets)
    except Exception as err:  # the supervisor reports the exit; the reason is logged here
        log.error("worker %d stopped: %s: %s", spec.index, type(err).__name__, err)
        raise SystemExit(1) from None


def _leave_with_supervisor(
        supervisor: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A clean-up context that stops the worker (as SIGTERM does) once its supervisor is gone:
    then it is the child of another process."""
    async def watch(app: web.Application) -> AsyncIterator[None]:
        del app

        async def check() -> None:
            while os.getppid() == supervisor:
                await asyncio.sleep(ORPHAN_CHECK_S)
            log.warning("the supervisor (pid %d) is gone: this worker stops", supervisor)
            os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.get_running_loop().create_task(check())
        try:
            yield
        finally:
            task.cancel()

    return watch
