-- Version 2: deployments remember the channel that opened them, one release per (app, version),
-- sequences reserved by the server, and each release's expiry.

-- The channel whose check-in opened the deployment: rollout counts are per channel, so a board
-- of another channel never moves this channel's rollout. Rows from version 1 take the board's
-- channel (boards never change channel).
ALTER TABLE deployments ADD COLUMN channel TEXT NOT NULL DEFAULT '';
UPDATE deployments SET channel = (SELECT channel FROM devices
                                  WHERE devices.device_id = deployments.device_id);
DROP INDEX deployments_by_release;
CREATE INDEX deployments_by_release ON deployments (release_id, channel, status);

-- Unix time the manifest stops being valid; version 1 rows are filled from their envelope by
-- the migration step in ota_server/storage/sqlite.py.
ALTER TABLE releases ADD COLUMN expires INTEGER;

-- A version names one release. Version 1 allowed two releases of one version: the first
-- registered keeps the name, later ones point at it and stay as they are (boards may run them).
ALTER TABLE releases ADD COLUMN duplicate_of INTEGER REFERENCES releases(id);
UPDATE releases SET duplicate_of = (SELECT MIN(first.id) FROM releases first
                                    WHERE first.app = releases.app
                                    AND first.version = releases.version)
WHERE id > (SELECT MIN(first.id) FROM releases first
            WHERE first.app = releases.app AND first.version = releases.version);
CREATE UNIQUE INDEX releases_by_version ON releases (app, version) WHERE duplicate_of IS NULL;

-- Sequences the server handed out (POST /v1/releases/sequence) and not yet registered: one per
-- (app, version), never two versions on one sequence.
CREATE TABLE sequence_reservations (
    app         TEXT NOT NULL,
    version     TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    PRIMARY KEY (app, version),
    UNIQUE (app, sequence)
);
