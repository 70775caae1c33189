-- Version 9: the fleet epoch on SQLite, as pg_migrations/0007_fleet_epoch.sql on PostgreSQL.
-- Several worker processes of one `ota serve` share the SQLite file, each with its own
-- connection and its own copies of channels' rollouts and base releases. The epoch is a
-- one-row counter that triggers move in the same transaction as every change to what a
-- check-in's offer depends on besides the board: a channel's rollouts, its base release, a
-- release being yanked. Every counter statement returns the epoch it saw, and a process
-- decides from its copy of a channel only when that copy was read at that epoch or a later
-- one (SqliteStore.current_rollout, docs/operations.md "Process-local state").
-- PostgreSQL's twin, pg_migrations/0009_fleet_epoch_sqlite.sql, does nothing: it has had the
-- epoch since version 7.
CREATE TABLE fleet_epoch (
    one   INTEGER PRIMARY KEY CHECK (one = 1),   -- a single row
    epoch INTEGER NOT NULL
);
INSERT INTO fleet_epoch (one, epoch) VALUES (1, 1);

-- SQLite triggers are per row and name one event each.
CREATE TRIGGER rollouts_epoch_insert AFTER INSERT ON rollouts
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER rollouts_epoch_update AFTER UPDATE ON rollouts
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER rollouts_epoch_delete AFTER DELETE ON rollouts
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER channels_epoch_insert AFTER INSERT ON channels
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER channels_epoch_update AFTER UPDATE ON channels
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER channels_epoch_delete AFTER DELETE ON channels
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER releases_epoch_yank AFTER UPDATE OF yanked ON releases
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
CREATE TRIGGER releases_epoch_delete AFTER DELETE ON releases
BEGIN UPDATE fleet_epoch SET epoch = epoch + 1; END;
