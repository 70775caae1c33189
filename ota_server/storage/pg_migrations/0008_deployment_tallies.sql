-- Version 8 for PostgreSQL: the meaning of migrations/0008_deployment_tallies.sql (SQLite):
-- boards per (release, channel, status), kept by triggers on `deployments` in the same
-- transaction as each write, so that a report's rollout rules read at most six rows
-- (PostgresStore.deployment_counts) instead of counting every deployment of the rollout:
-- that count cost O(boards in the rollout) per report, O(n^2) over a rollout
-- (docs/operations.md, "Deployment tallies").
--
-- The triggers are per statement, with transition tables: a statement's rows are summed per
-- (release, channel, status) first, so a batch of 500 offers (PostgresStore._OFFERS) writes
-- its tally row once, not 500 times, and a statement that moves no board between tallies
-- (a new reason, the same status) writes none.
--
-- Lock order: the changed tally rows are written by one INSERT ... ON CONFLICT DO UPDATE
-- whose rows come sorted by the primary key, so every transaction takes the row locks of the
-- tallies it changes in that one order. Two replicas moving boards in opposite directions
-- (one offered -> downloading, the other downloading -> offered) then both need the two
-- rows in the same order: the second waits for the first to commit instead of each holding
-- one row and waiting for the other (a deadlock, one report failed). A transaction of
-- several statements (PostgresStore.write_checkins, set_deployment) makes one statement of
-- its deployment writes for the same reason, and makes it its last: a transaction holding a
-- tally lock then waits for nothing but its commit, so tally locks close no cycle with the
-- row locks of boards and deployments either, and each is held for a commit's time.
CREATE TABLE deployment_tallies (
    release_id  BIGINT NOT NULL,
    channel     TEXT NOT NULL,
    status      TEXT NOT NULL,
    boards      BIGINT NOT NULL,   -- may reach 0 and stay
    PRIMARY KEY (release_id, channel, status)
);

-- No write to `deployments` between the back-fill and the triggers (replicas are meant to be
-- stopped while `ota db migrate` runs; one that is not waits here).
LOCK TABLE deployments IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO deployment_tallies (release_id, channel, status, boards)
SELECT release_id, channel, status, COUNT(*) FROM deployments
GROUP BY release_id, channel, status;

-- Adds each (release, channel, status, change) of `deltas` to its tally, in key order.
CREATE FUNCTION mpota_add_tallies(deltas deployment_tallies[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO deployment_tallies AS t (release_id, channel, status, boards)
    SELECT d.release_id, d.channel, d.status, d.boards FROM unnest(deltas) AS d
    WHERE d.boards <> 0
    ORDER BY d.release_id, d.channel COLLATE "C", d.status COLLATE "C"
    ON CONFLICT (release_id, channel, status) DO UPDATE SET boards = t.boards + EXCLUDED.boards
$$;

CREATE FUNCTION mpota_tally_deployments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM mpota_add_tallies(ARRAY(
            SELECT ROW(release_id, channel, status, COUNT(*))::deployment_tallies
            FROM added GROUP BY release_id, channel, status));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM mpota_add_tallies(ARRAY(
            SELECT ROW(release_id, channel, status, -COUNT(*))::deployment_tallies
            FROM removed GROUP BY release_id, channel, status));
    ELSE
        PERFORM mpota_add_tallies(ARRAY(
            SELECT ROW(release_id, channel, status, SUM(change))::deployment_tallies
            FROM (SELECT release_id, channel, status, 1 AS change FROM added
                  UNION ALL
                  SELECT release_id, channel, status, -1 FROM removed) AS moves
            GROUP BY release_id, channel, status));
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE fires no DELETE trigger; it empties `deployments`, so every tally is 0.
CREATE FUNCTION mpota_clear_tallies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM deployment_tallies;
    RETURN NULL;
END
$$;

-- Transition tables allow one event per trigger and no column list, so three triggers; the
-- UPDATE one sees every update of `deployments` and writes only tallies whose sum moved.
CREATE TRIGGER deployments_tally_insert AFTER INSERT ON deployments
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION mpota_tally_deployments();
CREATE TRIGGER deployments_tally_update AFTER UPDATE ON deployments
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION mpota_tally_deployments();
CREATE TRIGGER deployments_tally_delete AFTER DELETE ON deployments
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION mpota_tally_deployments();
CREATE TRIGGER deployments_tally_truncate AFTER TRUNCATE ON deployments
    FOR EACH STATEMENT EXECUTE FUNCTION mpota_clear_tallies();
