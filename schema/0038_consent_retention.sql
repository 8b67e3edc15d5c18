-- Consent tracking (homeserver/handlers/consent.py): one row per policy version a user
-- accepted, with the time. The user's current consent is the row of the configured
-- version; older rows are kept as the record of what was accepted when (GDPR export).
CREATE TABLE user_consents (
    user_id TEXT NOT NULL,
    version TEXT NOT NULL,
    accepted_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, version)
);
-- The consent server notice sent to a user for a policy version (at most one each).
CREATE TABLE consent_notices (
    user_id TEXT NOT NULL,
    version TEXT NOT NULL,
    sent_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, version)
);
-- Message retention runs (homeserver/handlers/retention.py): one row per run of a
-- purge job. Rooms are visited in room id order; last_room_id is the cursor a run
-- resumes from after a restart. Lifetime bounds are in ms (NULL: unbounded).
-- error is a fixed message, never an exception text.
CREATE TABLE retention_runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    shortest_max_lifetime BIGINT,
    longest_max_lifetime BIGINT,
    last_room_id TEXT,
    rooms_total BIGINT NOT NULL DEFAULT 0,
    rooms_done BIGINT NOT NULL DEFAULT 0,
    rooms_purged BIGINT NOT NULL DEFAULT 0,
    events_deleted BIGINT NOT NULL DEFAULT 0,
    events_hidden BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT
);
CREATE INDEX retention_runs_created ON retention_runs (created_ts);
CREATE INDEX retention_runs_status ON retention_runs (status);
