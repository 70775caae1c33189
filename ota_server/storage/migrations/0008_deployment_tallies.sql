-- Version 8: boards per (release, channel, status), kept by triggers on `deployments` in the
-- same transaction as each write, so that a report's rollout rules read at most six rows
-- (SqliteStore.deployment_counts) instead of counting every deployment of the rollout: that
-- count cost O(boards in the rollout) per report, O(n^2) over a rollout (docs/operations.md,
-- "Deployment tallies"). Back-filled here from the deployments already stored; a tally that
-- reaches 0 stays. PostgreSQL's twin is pg_migrations/0008_deployment_tallies.sql.
CREATE TABLE deployment_tallies (
    release_id  INTEGER NOT NULL,
    channel     TEXT NOT NULL,
    status      TEXT NOT NULL,
    boards      INTEGER NOT NULL,
    PRIMARY KEY (release_id, channel, status)
) WITHOUT ROWID;

INSERT INTO deployment_tallies (release_id, channel, status, boards)
SELECT release_id, channel, status, COUNT(*) FROM deployments
GROUP BY release_id, channel, status;

-- Every statement that writes `deployments` fires these (INSERT OR IGNORE and ON CONFLICT DO
-- NOTHING only for the rows they insert). One process owns a SQLite database and its writes
-- are serialised, so the order of the two rows an update touches does not matter here.
CREATE TRIGGER deployments_tally_insert AFTER INSERT ON deployments
BEGIN
    INSERT INTO deployment_tallies (release_id, channel, status, boards)
    VALUES (NEW.release_id, NEW.channel, NEW.status, 1)
    ON CONFLICT (release_id, channel, status) DO UPDATE SET boards = boards + 1;
END;

CREATE TRIGGER deployments_tally_update AFTER UPDATE OF status, channel, release_id
ON deployments
WHEN OLD.status IS NOT NEW.status OR OLD.channel IS NOT NEW.channel
     OR OLD.release_id IS NOT NEW.release_id
BEGIN
    UPDATE deployment_tallies SET boards = boards - 1
    WHERE release_id = OLD.release_id AND channel = OLD.channel AND status = OLD.status;
    INSERT INTO deployment_tallies (release_id, channel, status, boards)
    VALUES (NEW.release_id, NEW.channel, NEW.status, 1)
    ON CONFLICT (release_id, channel, status) DO UPDATE SET boards = boards + 1;
END;

CREATE TRIGGER deployments_tally_delete AFTER DELETE ON deployments
BEGIN
    UPDATE deployment_tallies SET boards = boards - 1
    WHERE release_id = OLD.release_id AND channel = OLD.channel AND status = OLD.status;
END;
