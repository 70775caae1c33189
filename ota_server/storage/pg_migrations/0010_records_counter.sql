-- Version 10 for PostgreSQL, as migrations/0010_records_counter.sql for SQLite: the counter of
-- the board request whose records (inventory) a board's row shows. A check-in's inventory is
-- written behind (ota_server/counters.py), and a report through another replica may be
-- written first: every inventory write carries its request's counter and is applied only over
-- records of an older request (`records_counter < $n`).
ALTER TABLE devices ADD COLUMN records_counter BIGINT NOT NULL DEFAULT 0;
