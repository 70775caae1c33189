-- Version 7 for PostgreSQL: the fleet epoch, a one-row counter that moves (in the same
-- transaction) with every change to what a check-in's offer depends on besides the board:
-- a channel's rollouts, its base release, a release being yanked. Each replica keeps the
-- rollout and base release of a channel with the epoch they were read at, and every counter
-- statement of a board request returns the epoch it saw: a replica decides from its copy
-- only when that copy is at least as new, else it reads the channel again
-- (PostgresStore.current_rollout, docs/operations.md "Scale-out components"). SQLite's
-- migrations/0007_fleet_epoch.sql is empty; SQLite's epoch came with version 9
-- (migrations/0009_fleet_epoch.sql), once several processes shared its file.
CREATE TABLE fleet_epoch (
    one   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),   -- a single row
    epoch BIGINT NOT NULL
);
INSERT INTO fleet_epoch (one, epoch) VALUES (TRUE, 1);

CREATE FUNCTION mpota_fleet_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE fleet_epoch SET epoch = epoch + 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER rollouts_epoch AFTER INSERT OR UPDATE OR DELETE ON rollouts
    FOR EACH ROW EXECUTE FUNCTION mpota_fleet_changed();
CREATE TRIGGER channels_epoch AFTER INSERT OR UPDATE OR DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION mpota_fleet_changed();
CREATE TRIGGER releases_epoch AFTER UPDATE OF yanked OR DELETE ON releases
    FOR EACH ROW EXECUTE FUNCTION mpota_fleet_changed();
