-- Version 2 for PostgreSQL: the meaning of migrations/0002_honest_rollouts.sql (SQLite).

-- The channel whose check-in opened the deployment (rollout counts are per channel); rows from
-- version 1 take the board's channel (boards never change channel).
ALTER TABLE deployments ADD COLUMN channel TEXT NOT NULL DEFAULT '';
UPDATE deployments SET channel = devices.channel FROM devices
WHERE devices.device_id = deployments.device_id;
DROP INDEX deployments_by_release;
CREATE INDEX deployments_by_release ON deployments (release_id, channel, status);

-- Unix time the manifest stops being valid. SQLite fills version 1 rows from their envelopes;
-- a PostgreSQL database was never used at version 1 (the backend started at version 2, and
-- `migrate()` applies both at once), so NOT NULL here fails loudly on a release row that
-- should not exist rather than leaving an expiry unknown.
ALTER TABLE releases ADD COLUMN expires BIGINT NOT NULL;

-- A version names one release (PostgreSQL databases have no version 1 duplicates to keep).
ALTER TABLE releases ADD COLUMN duplicate_of BIGINT REFERENCES releases(id);
CREATE UNIQUE INDEX releases_by_version ON releases (app, version) WHERE duplicate_of IS NULL;

-- Sequences the server handed out and not yet registered: one per (app, version), never two
-- versions on one sequence.
CREATE TABLE sequence_reservations (
    app         TEXT NOT NULL,
    version     TEXT NOT NULL,
    sequence    BIGINT NOT NULL,
    created     BIGINT NOT NULL,
    PRIMARY KEY (app, version),
    UNIQUE (app, sequence)
);
