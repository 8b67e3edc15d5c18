-- The audit trail (homeserver/audit/): security_events becomes a hash chain.
-- Actor columns already exist (user_id, device_id, session_id, ip, user_agent);
-- event_type stays the category, action the precise action (e.g. quarantine_media).
ALTER TABLE security_events ADD COLUMN action TEXT;
ALTER TABLE security_events ADD COLUMN target TEXT;
ALTER TABLE security_events ADD COLUMN request_id TEXT;
ALTER TABLE security_events ADD COLUMN seq BIGINT;
ALTER TABLE security_events ADD COLUMN prev_hash TEXT;
ALTER TABLE security_events ADD COLUMN entry_hash TEXT;
CREATE UNIQUE INDEX security_events_seq ON security_events (seq);
CREATE INDEX security_events_user_seq ON security_events (user_id, seq);
CREATE INDEX security_events_target_seq ON security_events (target, seq);
CREATE INDEX security_events_action_seq ON security_events (action, seq);

-- One row: the chain's head. Appends lock it (PostgreSQL: FOR UPDATE; SQLite: BEGIN
-- IMMEDIATE), so concurrent writers, in one process or many, extend the chain in turn.
CREATE TABLE audit_chain_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    entry_hash TEXT NOT NULL
);
INSERT INTO audit_chain_head (id, seq, entry_hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Retention: every purge records the seq and hash of the last entry it deleted, so the
-- first remaining entry still links to something and the chain verifies across the cut.
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    entry_hash TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    cutoff_ts BIGINT NOT NULL,
    purged_count BIGINT NOT NULL
);
