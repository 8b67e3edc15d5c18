-- GDPR data exports (POST /_parley/client/v1/export, homeserver/gdpr/export.py): one row
-- per job. status is 'queued', 'running', 'complete' or 'failed'; error is a fixed
-- message, never an exception text. The download token is stored as its SHA-256 only;
-- it is single-use (cleared when a download starts) and expires at token_expires_ts.
-- The archive (<data_dir>/exports/<export_id>.zip) and the row are deleted by the
-- periodic cleanup once expires_ts has passed.
CREATE TABLE gdpr_exports (
    export_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    archive_size BIGINT,
    created_ts BIGINT NOT NULL,
    finished_ts BIGINT,
    expires_ts BIGINT,
    token_hash TEXT,
    token_expires_ts BIGINT
);
CREATE INDEX gdpr_exports_user ON gdpr_exports (user_id, status);
CREATE INDEX gdpr_exports_status ON gdpr_exports (status);
CREATE INDEX gdpr_exports_expires ON gdpr_exports (expires_ts);
-- A cursor per section of each job, so a job resumes where it stopped after a restart:
-- cursor is the section's own position (a stream ordering, a media id, an audit seq),
-- batches the number of part files written, items how many entries they hold.
CREATE TABLE gdpr_export_sections (
    export_id TEXT NOT NULL,
    section TEXT NOT NULL,
    cursor TEXT,
    batches INTEGER NOT NULL DEFAULT 0,
    items BIGINT NOT NULL DEFAULT 0,
    done BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (export_id, section)
);
-- The user's own events, in stream order, in batches.
CREATE INDEX events_sender_stream ON events (sender, stream_ordering);
