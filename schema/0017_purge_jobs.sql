-- Admin history purges (POST /_synapse/admin/v1/purge_history, homeserver/handlers/
-- purge_history.py): one row per job, so its status can be read by id from any worker
-- (GET /_synapse/admin/v1/purge_history_status/{purge_id}). status is 'active',
-- 'complete' or 'failed'; error is a fixed message, never an exception text. Events
-- before up_to_stream_ordering are purged; rows of finished jobs are removed a day
-- after they finish (as Synapse forgets purge statuses).
CREATE TABLE purge_history_jobs (
    purge_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    up_to_stream_ordering BIGINT NOT NULL,
    delete_local_events BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    deleted_events BIGINT NOT NULL DEFAULT 0,
    hidden_events BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL,
    finished_ts BIGINT
);
CREATE INDEX purge_history_jobs_room ON purge_history_jobs (room_id, status);
CREATE INDEX purge_history_jobs_finished ON purge_history_jobs (finished_ts);
-- A purge deletes the push actions of purged events by event id.
CREATE INDEX event_push_actions_event ON event_push_actions (event_id);
