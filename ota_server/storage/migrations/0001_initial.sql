-- Version 1: tokens, roots, releases, boards, channels, rollouts, deployments.
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,     -- hex sha256 of the bearer token; the token is never stored
    created     INTEGER NOT NULL,
    revoked     INTEGER                   -- unix time of revocation, NULL while valid
);

CREATE TABLE roots (
    version     INTEGER PRIMARY KEY,
    envelope    BLOB NOT NULL,
    created     INTEGER NOT NULL
);

CREATE TABLE releases (
    id          INTEGER PRIMARY KEY,
    app         TEXT NOT NULL,
    version     TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    boards      TEXT NOT NULL,            -- JSON list from the manifest, to offer only to them
    envelope    BLOB NOT NULL,
    created     INTEGER NOT NULL,
    UNIQUE (app, sequence)
);

CREATE TABLE release_blobs (
    release_id  INTEGER NOT NULL REFERENCES releases(id),
    blob        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (release_id, blob)
);

CREATE TABLE devices (
    device_id    TEXT PRIMARY KEY,
    public_key   BLOB NOT NULL,           -- 65-byte uncompressed P-256 point
    board        TEXT NOT NULL,
    tags         TEXT NOT NULL DEFAULT '[]',
    channel      TEXT NOT NULL,
    bucket       INTEGER NOT NULL,        -- stable rollout bucket 0..9999 from sha256(device_id)
    counter      INTEGER NOT NULL DEFAULT -1,
    created      INTEGER NOT NULL,
    revoked      INTEGER,
    app          TEXT,
    version      TEXT,
    sequence     INTEGER,
    root_version INTEGER,
    micropython  TEXT,
    mem_free     INTEGER,
    slot         TEXT,
    last_seen    INTEGER,
    last_status  TEXT,
    last_error   TEXT
);

CREATE TABLE channels (
    name            TEXT PRIMARY KEY,
    base_release_id INTEGER REFERENCES releases(id)   -- what every board of the channel may have
);

CREATE TABLE rollouts (
    id          INTEGER PRIMARY KEY,
    channel     TEXT NOT NULL,
    release_id  INTEGER NOT NULL REFERENCES releases(id),
    policy      TEXT NOT NULL,
    stage       INTEGER NOT NULL,
    state       TEXT NOT NULL,             -- active, paused, completed, aborted, superseded
    reason      TEXT,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL
);
CREATE INDEX rollouts_by_channel ON rollouts (channel, id);

CREATE TABLE deployments (
    device_id   TEXT NOT NULL REFERENCES devices(device_id),
    release_id  INTEGER NOT NULL REFERENCES releases(id),
    status      TEXT NOT NULL,             -- offered, downloading, installed, confirmed, failed, rolled_back
    reason      TEXT,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (device_id, release_id)
);
CREATE INDEX deployments_by_release ON deployments (release_id, status);
