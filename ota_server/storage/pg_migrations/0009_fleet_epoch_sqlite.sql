-- Version 9: nothing for PostgreSQL. SQLite's migrations/0009_fleet_epoch.sql adds the fleet
-- epoch that PostgreSQL has had since version 7 (0007_fleet_epoch.sql), now that several
-- worker processes share a SQLite file. Kept so that both backends keep one schema version
-- number. One harmless statement: asyncpg fails on a script of comments alone (an empty
-- query's answer carries no status).
SELECT 1;
