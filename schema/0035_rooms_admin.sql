-- Rooms admin API (homeserver/handlers/admin_rooms.py, room_shutdown.py).
--
-- Blocked rooms: local users may not join, be invited to or create a room with a
-- blocked id (M_FORBIDDEN); kept after a room is purged, as Synapse's blocked_rooms.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
-- Aliases a room shutdown removed: creating one again is refused (M_FORBIDDEN), so a
-- shut-down room cannot quietly reappear under its old name.
CREATE TABLE blocked_room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    delete_id TEXT,
    created_ts BIGINT NOT NULL
);
-- Room shutdown / purge jobs (DELETE /_synapse/admin/v2/rooms/{roomId}): one row per
-- job, resumed at start-up while unfinished. status is Synapse's: 'scheduled',
-- 'shutting_down', 'purging', 'complete' or 'failed'; error is a fixed message, never
-- an exception text. params is the request (JSON: new_room_user_id, room_name,
-- message, block, purge, force_purge); result the progress so far (JSON:
-- kicked_users, failed_to_kick_users, local_aliases, new_room_id, purged_events), so a
-- resumed job neither redoes nor forgets what was done.
CREATE TABLE room_shutdown_jobs (
    delete_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    error TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX room_shutdown_jobs_room ON room_shutdown_jobs (room_id, created_ts);
CREATE INDEX room_shutdown_jobs_status ON room_shutdown_jobs (status);
CREATE INDEX room_shutdown_jobs_created ON room_shutdown_jobs (created_ts);
-- The background jobs listing (GET /_parley/admin/v1/background_jobs) pages every job
-- table newest first.
CREATE INDEX purge_history_jobs_created ON purge_history_jobs (created_ts);
CREATE INDEX gdpr_exports_created ON gdpr_exports (created_ts);
