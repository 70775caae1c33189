"""Group commit of board request counters, and the check-in records written behind them.

Every board request moves its board's counter in SQLite before it is answered (the replay
check, docs/protocol.md). A commit costs more than the UPDATE itself, so requests that reach
the counter step in the same turn of the event loop share one transaction:

- each request waits for the commit that holds its UPDATE before it goes on, so no answer
  is ever sent for a counter that is not in the database (replay-proof across restarts
  exactly as one commit per request is);
- the UPDATEs run in arrival order with the same `WHERE counter < ?` guard, so the outcome of
  each is what it would be one after the other (two requests with one counter: one passes);
- a failed transaction rolls back all of them and fails every request of the batch.

Under no load a batch is one request and costs one commit, as before; under load (figures S1
and S2 in docs/benchmarks.md) batches of a few requests share one. One batch commits at a
time: on a store whose commit waits (PostgreSQL over the network), requests arriving
meanwhile form the next batch, committed once the one before is done.

What a check-in records (the inventory the board reports, and `offered` for a release it is
offered) is written behind: the check-in is answered once its counter is committed, and its
records are queued and reach the database

- in the transaction of the next counter commit of the same board, before that request is
  handled: the board's later requests (a report after an offer) are handled with them in the
  database (no board request reads another board's inventory or offers). A request whose
  handler needs none of them (`records_first=False`: a check-in, which reads no inventory and
  no `offered` status, and whose own records merge with the queued ones) leaves them queued,
  so a board checking in again and again costs its counter alone;
- before a publisher request is handled (`flush`, from the auth middleware);
- at the latest WRITE_BEHIND_SECONDS after they were queued (a timer), all of them in one
  transaction;
- when the server stops (`close`).

Replicas (`shared`: several processes on one PostgreSQL database) break the first promise: a
board's next request may reach another replica, which has none of this one's queue. So
there a check-in that offers a release writes the offer before it is answered
(`write_offer`, from ota_server.routes_device.checkin): the board's report about the offer
finds the deployment on any replica. Offers are group-committed as counters are: those of
one turn of the loop share one statement, one batch at a time, and each check-in is answered
once the statement holding its offer is done. A deployment row, once there, is never
deleted, and an offer never changes one that is there (ON CONFLICT DO NOTHING): so an offer
this process has written once is not written again (a bounded memory of them, OFFERS_KEPT),
and a board checking in again costs its counter alone. The inventory is still written
behind; a publisher on another replica sees it at most WRITE_BEHIND_SECONDS later.

Inventories carry their request's counter (storage.records.RECORDS_COUNTER) and are written
only over an older request's records: one written behind never undoes a later request of the
board written first through another process.

The worker processes of one `ota serve --workers N` on SQLite are not `shared`: there a second
commit per offered check-in contends for the file's one write lock with the other workers'
commits (figure S3's p99 went from 7 ms to over 100 ms). They write offers behind, and a report
that reaches another worker first waits for them (ota_server.routes_device.PEER_OFFER_WAIT_S).

So a check-in costs its counter's commit alone instead of three commits, and the records of
many check-ins share one transaction and the pages it writes (figure S3). A process killed
without its clean-up (SIGKILL, OOM) can lose the records of the check-ins of its last
WRITE_BEHIND_SECONDS, never a counter, a last-seen time or anything a report wrote
(docs/operations.md, "Data directory").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ota_server.bounded import keep
from ota_server.storage import MetadataStore
from ota_server.storage.errors import StoreBusy
from ota_server.storage.records import Advances

WRITE_BEHIND_SECONDS = 0.25
# (board, release) offers written before an answer that this process remembers as written
# (module docstring, "Replicas"); beyond that the oldest is forgotten, one at a time.
OFFERS_KEPT = 100_000
# A request's advance: accepted or not, and the fleet epoch its batch's statement saw.
_Outcome = tuple[bool, int | None]
# (device_id, counter, records_first, the request's future)
_Pending = tuple[str, int, bool, "asyncio.Future[_Outcome]"]
_Offer = tuple[str, int, str]  # (device_id, release_id, channel)
# A group commit that finds another process's write lock held tries again after this, then
# after twice as long each time up to LOCK_RETRY_MAX_S, for LOCK_PATIENCE_S (CounterCommits
# ._write). A commit holds the lock for a fraction of a millisecond.
LOCK_RETRY_S = 0.0002
LOCK_RETRY_MAX_S = 0.005
LOCK_PATIENCE_S = 5.0
log = logging.getLogger("ota_server")


class CounterCommits:
    """Queue counter advances and commit them together at the next turn of the loop; queue
    check-in records and write them behind (module docstring)."""

    def __init__(self, store: MetadataStore, write_behind: float | None = None, *,
                 shared: bool = False):
        """`shared`: other processes (replicas) serve the same boards from `store`, so a
        board's next request may reach one of them (module docstring, "Replicas")."""
        self._store = store
        self.shared = shared
        self._pending: list[_Pending] = []
        self._write_behind = WRITE_BEHIND_SECONDS if write_behind is None else write_behind
        # Queued check-in records: the inventory fields of each board, later ones over earlier
        # ones, and the (board, release) offers; dicts keep the order they came in.
        self._inventories: dict[str, dict[str, Any]] = {}
        self._offers: dict[tuple[str, int, str], None] = {}
        self._timer: asyncio.TimerHandle | None = None
        # The task committing batches, while there is one: one at a time, in arrival order.
        self._committer: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        # Offers to write before their check-ins are answered (`write_offer`), and the task
        # writing them, while there is one.
        self._offers_now: list[tuple[_Offer, asyncio.Future[None]]] = []
        self._offerer: asyncio.Task[None] | None = None
        self._offers_written: dict[tuple[str, int], None] = {}

    async def advance(self, device_id: str, counter: int) -> bool:
        """True when `counter` was greater than the last one of the board, which is not
        revoked, and is now committed (and with it every check-in record of this board
        queued before)."""
        accepted, _ = await self.advance_with_epoch(device_id, counter)
        return accepted

    async def advance_with_epoch(self, device_id: str, counter: int, *,
                                 records_first: bool = True) -> _Outcome:
        """advance(), and the fleet epoch the committing statement saw (Advances.epoch: None
        when refused or on a store without one), for the store's current_rollout. With
        `records_first` False the board's queued records may stay queued (module docstring)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Outcome] = loop.create_future()
        self._pending.append((device_id, counter, records_first, done))
        if self._committer is None:
            # Started now, it runs at the next turn of the loop: requests arriving in this turn
            # join the batch. While it waits for a commit (a database over the network), new
            # requests gather into the next batch, committed after it: never two at once, so
            # a board's counters are committed in the order they came.
            self._committer = loop.create_task(self._commit_batches())
        return await done

    async def write_offer(self, device_id: str, release_id: int, channel: str) -> None:
        """Write now that `channel` offered the release to the board (open_deployment_for),
        in one statement with the other offers of this turn of the loop; return once it is in
        the database (at once when this process wrote it before: module docstring). Raises
        the store's error when that statement fails (the offers of its batch are then not
        written)."""
        if (device_id, release_id) in self._offers_written:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._offers_now.append(((device_id, release_id, channel), done))
        if self._offerer is None:  # as the counter committer: one batch at a time
            self._offerer = loop.create_task(self._write_offers())
        await done

    async def _write_offers(self) -> None:
        try:
            while self._offers_now:
                batch, self._offers_now = self._offers_now, []
                try:
                    await self._store.open_deployments_for(
                        list(dict.fromkeys(offer for offer, _ in batch)))
                except BaseException as err:
                    _fail_waiters([done for _, done in batch], err)
                    continue
                for (device_id, release_id, _), done in batch:
                    keep(self._offers_written, (device_id, release_id), None, OFFERS_KEPT)
                    if not done.done():  # a request cancelled meanwhile: nothing to tell
                        done.set_result(None)
        finally:
            self._offerer = None

    def record_checkin(self, device_id: str, inventory: dict[str, Any],
                       offered: int | None, channel: str = "") -> None:
        """Queue a check-in's records: overwrite the board's `inventory` fields, and when
        `offered` is a release id, mark that release offered to the board by `channel` unless
        it already has a deployment of it. Written behind (module docstring); never raises."""
        self._inventories.setdefault(device_id, {}).update(inventory)
        if offered is not None:
            self._offers[(device_id, offered, channel)] = None
        self._arm()

    async def flush(self) -> None:
        """Write every queued check-in record now. Raises the store's error when that fails;
        the records stay queued then."""
        inventories, offers = self._take_records()
        if not inventories and not offers:
            return
        try:
            await self._write(lambda: self._store.write_checkins(inventories, offers))
        except BaseException:
            self._requeue(inventories, offers)
            raise

    async def close(self) -> None:
        """Write what is queued (at shutdown, before the store closes); raises as flush."""
        for task in (self._committer, self._offerer, self._flusher):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        await self.flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def queued(self) -> int:
        """Check-in records waiting to be written (boards with inventory, plus offers)."""
        return len(self._inventories) + len(self._offers)

    def _take_records(self) -> tuple[list[tuple[str, dict[str, Any]]],
                                     list[tuple[str, int, str]]]:
        inventories, offers = list(self._inventories.items()), list(self._offers)
        self._inventories, self._offers = {}, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return inventories, offers

    def _requeue(self, inventories: list[tuple[str, dict[str, Any]]],
                 offers: list[tuple[str, int, str]]) -> None:
        """Put records that failed to be written back, under anything queued since."""
        newer, self._inventories = self._inventories, {}
        for device_id, fields in inventories:
            self._inventories[device_id] = dict(fields)
        for device_id, fields in newer.items():
            self._inventories.setdefault(device_id, {}).update(fields)
        self._offers = dict.fromkeys([*offers, *self._offers])
        self._arm()

    def _arm(self) -> None:
        """Start the write-behind timer unless it runs (or no loop does: then only flush and
        close write the records)."""
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self._write_behind, self._flush_on_timer)

    def _flush_on_timer(self) -> None:
        self._timer = None
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_in_background())
        else:  # the last write still waits for the database: try again one window later
            self._arm()

    async def _flush_in_background(self) -> None:
        try:
            await self.flush()
        except Exception:  # kept queued and tried again; the log says why
            log.exception("check-in records (%d queued) not written; retrying in %.1fs",
                          self.queued, self._write_behind)
        finally:
            self._flusher = None

    async def _commit_batches(self) -> None:
        try:
            while self._pending:
                await self._commit()
        finally:
            self._committer = None

    async def _commit(self) -> None:
        batch, self._pending = self._pending, []
        advances = [(device_id, counter) for device_id, counter, _, _ in batch]
        # A board's queued records go in with its own next counter that wants them (all queued
        # ones then: one transaction either way); other boards' wait for the timer.
        inventories: list[tuple[str, dict[str, Any]]] = []
        offers: list[tuple[str, int, str]] = []
        if not self._inventories.keys().isdisjoint(
                device_id for device_id, _, records_first, _ in batch if records_first):
            inventories, offers = self._take_records()
        try:
            if inventories or offers:
                try:
                    accepted = await self._write(
                        lambda: self._store.write_checkins(inventories, offers, advances))
                except Exception:
                    # Whatever failed, the counters must not wait on the records: they go back
                    # to the queue and the counters are tried alone.
                    self._requeue(inventories, offers)
                    log.exception("check-in records (%d queued) not written with the counters",
                                  self.queued)
                    accepted = await self._write(lambda: self._store.advance_counters(advances))
            else:
                # a batch of one, or of distinct boards on PostgreSQL: one statement
                accepted = await self._write(lambda: self._store.advance_counters(advances))
        except BaseException as err:  # the whole batch rolled back: nobody's counter moved
            _fail_waiters([done for _, _, _, done in batch], err)
            return
        for (_, _, _, done), ok in zip(batch, accepted, strict=True):
            if not done.done():  # a request cancelled meanwhile (client gone): nothing to tell
                done.set_result((ok, accepted.epoch))


    async def _write(self, write: Callable[[], Awaitable[Advances]]) -> Advances:
        """`write()`, on a store shared with other processes' connections that can stop the
        event loop to wait for their lock (SqliteStore.lock_waits_off: the workers of
        `ota serve --workers N`), without that: while another process holds the lock, the
        write is tried again on the loop (LOCK_RETRY_S, doubling up to LOCK_RETRY_MAX_S), and
        this worker's other requests go on meanwhile; after LOCK_PATIENCE_S it waits in the
        store as before (a lock held that long is a stuck writer, not contention)."""
        lock_waits_off = getattr(self._store, "lock_waits_off", None)
        if lock_waits_off is None:
            return await write()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_PATIENCE_S
        pause = LOCK_RETRY_S
        while loop.time() < deadline:
            try:
                with lock_waits_off():
                    return await write()
            except StoreBusy:
                await asyncio.sleep(pause)
                pause = min(pause * 2, LOCK_RETRY_MAX_S)
        return await write()


def _fail_waiters(waiters: list[asyncio.Future[Any]], err: BaseException) -> None:
    """Tell every request still waiting on a failed write: the store's error, or a cancel
    when the server is stopping (then `err` is raised again, from the caller's except)."""
    for done in waiters:
        if done.done():
            continue
        if isinstance(err, Exception):
            done.set_exception(err)
        else:  # the server stopping: the requests end with it
            done.cancel()
    if not isinstance(err, Exception):
        raise err
