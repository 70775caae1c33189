-- Version 6 for PostgreSQL: the meaning of migrations/0006_ui_sessions.sql (SQLite): the
-- dashboard's sessions in the database, shared by every replica (docs/dashboard.md,
-- Sessions); the session id only as its SHA-256.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    actor TEXT NOT NULL,
    scope TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    seen DOUBLE PRECISION NOT NULL,
    flash JSONB NOT NULL DEFAULT '[]'
);
CREATE INDEX ui_sessions_by_created ON ui_sessions (created);

-- PostgreSQL only: a stored root is announced on the channel `mpota_roots` (its version as
-- the payload), delivered when the inserting transaction commits. Each replica listens there
-- and moves the newest root behind its check-ins' X-Ota-Root hint (ota_server/trust.py,
-- PostgresStore.watch_roots); SQLite has one process, which stores its roots itself.
CREATE FUNCTION mpota_root_stored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mpota_roots', NEW.version::text);
    RETURN NEW;
END
$$;
CREATE TRIGGER roots_notify AFTER INSERT ON roots
    FOR EACH ROW EXECUTE FUNCTION mpota_root_stored();
