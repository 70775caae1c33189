-- Version 10: the counter of the board request whose records (inventory) a board's row shows.
-- A check-in's inventory is written behind (ota_server/counters.py); with several processes
-- (the workers of `ota serve --workers N`, replicas on PostgreSQL) a board's report through
-- another process may be written first, and the check-in's older inventory must not
-- overwrite it. Every inventory write carries its request's counter and is applied only over
-- records of an older request (`records_counter < ?`).
ALTER TABLE devices ADD COLUMN records_counter INTEGER NOT NULL DEFAULT 0;
