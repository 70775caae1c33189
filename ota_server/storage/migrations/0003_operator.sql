-- Version 3: token scopes, the audit log, yanked releases and each release's signer key ids.

-- What a publisher token may do: read (list), publish (upload, register, roll out) or admin
-- (revoke boards, upload roots, manage tokens); docs/operations.md, "Tokens and scopes".
-- Tokens from before scopes could do everything, and keep working as they did: admin.
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';

-- Every state-changing publisher call: who (the token's name), what (method, path and a
-- summary), when, and the outcome (HTTP status and error code).
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    scope       TEXT NOT NULL,
    action      TEXT NOT NULL,             -- "POST /v1/releases", or a local command
    target      TEXT NOT NULL DEFAULT '',  -- what it was about: a channel, a release, a board
    status      INTEGER NOT NULL,
    outcome     TEXT NOT NULL              -- "ok", or the error's stable code
);

-- Unix time a publisher yanked the release: from then on it is offered to no board (boards
-- that run it keep it). NULL while it may be offered.
ALTER TABLE releases ADD COLUMN yanked INTEGER;

-- The key ids that signed the release's manifest (JSON list), from its envelope; version 2
-- rows are filled by the migration step in ota_server/storage/sqlite.py.
ALTER TABLE releases ADD COLUMN signers TEXT NOT NULL DEFAULT '[]';
