-- Two-factor login (homeserver/auth/mfa.py). A user has TOTP enabled iff ``secret`` is
-- set. ``pending_secret`` is an enrolment started but not yet confirmed with a code.
-- Both secrets are written and read only through storage/stores/mfa.py's
-- _seal_secret/_open_secret (encryption at rest wraps those two).
CREATE TABLE mfa_totp (
    user_id TEXT PRIMARY KEY,
    secret TEXT,
    pending_secret TEXT,
    pending_ts BIGINT,
    enabled_ts BIGINT,
    -- The newest accepted time-step: a code of this step or an older one is a replay.
    last_step BIGINT NOT NULL DEFAULT 0
);

-- One-time recovery codes, Argon2id-hashed; ``used_ts`` set when spent.
CREATE TABLE mfa_recovery_codes (
    user_id TEXT NOT NULL,
    code_id INTEGER NOT NULL,
    code_hash TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    used_ts BIGINT,
    PRIMARY KEY (user_id, code_id)
);
