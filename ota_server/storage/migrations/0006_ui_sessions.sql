-- Version 6: the dashboard's sessions in the database, so that a login through one replica
-- of the server is known to every other (docs/dashboard.md, Sessions). The cookie's random
-- session id is stored only as its SHA-256 (a copy of this table opens no session), the
-- token only as the hash the tokens table has; flash is a JSON list of messages.
CREATE TABLE IF NOT EXISTS ui_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    actor TEXT NOT NULL,
    scope TEXT NOT NULL,
    created REAL NOT NULL,
    seen REAL NOT NULL,
    flash TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS ui_sessions_by_created ON ui_sessions (created);
