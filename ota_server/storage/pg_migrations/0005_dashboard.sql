-- Version 5 for PostgreSQL: the meaning of migrations/0005_dashboard.sql (SQLite): indexes
-- for the dashboard's fleet counts and board table (ota_server/ui). No index on last_seen:
-- every check-in moves it.
CREATE INDEX devices_by_channel ON devices (channel, device_id);
CREATE INDEX devices_by_version ON devices (app, version);
