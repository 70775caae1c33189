"""Group commit of board request counters.

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
and S2 in docs/benchmarks.md) batches of a few requests share one.
"""

from __future__ import annotations

import asyncio

from ota_server.storage import MetadataStore

_Pending = tuple[str, int, "asyncio.Future[bool]"]


class CounterCommits:
    """Queue counter advances and commit them together at the next turn of the loop."""

    def __init__(self, store: MetadataStore):
        self._store = store
        self._pending: list[_Pending] = []

    async def advance(self, device_id: str, counter: int) -> bool:
        """True when `counter` was greater than the board's last one and is now committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._commit)
        self._pending.append((device_id, counter, done))
        return await done

    def _commit(self) -> None:
        batch, self._pending = self._pending, []
        advances = [(device_id, counter) for device_id, counter, _ in batch]
        try:
            if len(advances) == 1:  # autocommit: one statement is one transaction
                accepted = [self._store.advance_counter(*advances[0])]
            else:
                accepted = self._store.advance_counters(advances)
        except Exception as err:  # the whole batch rolled back: nobody's counter moved
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(err)
            return
        for (_, _, done), ok in zip(batch, accepted, strict=True):
            if not done.done():  # a request cancelled meanwhile (client gone): nothing to tell
                done.set_result(ok)
