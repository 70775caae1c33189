-- Version 5: indexes for the dashboard's fleet counts and board table (ota_server/ui).
-- The board table pages by device_id (the primary key); these serve its channel and version
-- filters and the fleet page's counts by channel and by version without reading every row.
-- No index on last_seen: every check-in moves it, and an index there would cost each one a
-- write; the silent count reads the table instead (docs/dashboard.md, Scale).
CREATE INDEX IF NOT EXISTS devices_by_channel ON devices (channel, device_id);
CREATE INDEX IF NOT EXISTS devices_by_version ON devices (app, version);
