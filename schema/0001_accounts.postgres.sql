CREATE SEQUENCE account_data_stream_seq;

-- Append-only record of authentication and session events (the audit module owns it later).
CREATE TABLE security_events (
    id BIGSERIAL PRIMARY KEY,
    ts BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    outcome TEXT NOT NULL,
    user_id TEXT,
    device_id TEXT,
    session_id TEXT,
    ip TEXT,
    user_agent TEXT,
    reason TEXT,
    details TEXT
);
CREATE INDEX security_events_user_ts ON security_events (user_id, ts);
CREATE INDEX security_events_ts ON security_events (ts);
