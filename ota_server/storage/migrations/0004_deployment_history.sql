-- Version 4: each board's deployment history, one row per report that moved a deployment
-- (release, outcome, the board's reason, when), for `ota devices show` (docs/operations.md).
-- `deployments` keeps only a deployment's latest status; this keeps how it got there and
-- why a trial failed. Bounded per board: SqliteStore.set_deployment keeps the newest
-- HISTORY_PER_DEVICE rows of a board (ota_server/storage/records.py).
CREATE TABLE deployment_history (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    release_id  INTEGER NOT NULL REFERENCES releases(id),
    status      TEXT NOT NULL,             -- downloading, installed, confirmed, failed, rolled_back
    reason      TEXT,                      -- the board's words (validated: docs/protocol.md)
    at          INTEGER NOT NULL           -- unix time the server took the report
);
CREATE INDEX deployment_history_by_device ON deployment_history (device_id, id);
