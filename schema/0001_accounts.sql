-- Accounts, devices, sessions and the tables the client-server account APIs use.
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    created_ts BIGINT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    is_guest BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated_ts BIGINT,
    password_changed_ts BIGINT
);

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts BIGINT NOT NULL,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    last_seen_user_agent TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- One row per login. Access tokens (JWTs) carry the session id as `sid`;
-- revoking the session makes every token of it fail.
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    uses_refresh BOOLEAN NOT NULL DEFAULT FALSE,
    revoked_ts BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_user_device ON sessions (user_id, device_id);

-- Refresh tokens are stored only as SHA-256 hashes; each is single use.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    used_ts BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INTEGER,
    pending INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    expiry_time BIGINT,
    created_ts BIGINT NOT NULL
);

-- User-interactive auth sessions live in the database so any worker can continue one.
CREATE TABLE ui_auth_sessions (
    session_id TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL,
    uri TEXT NOT NULL,
    method TEXT NOT NULL,
    user_id TEXT,
    serverdict TEXT NOT NULL
);
CREATE TABLE ui_auth_stage_results (
    session_id TEXT NOT NULL REFERENCES ui_auth_sessions (session_id) ON DELETE CASCADE,
    stage_type TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (session_id, stage_type)
);

CREATE TABLE profiles (
    user_id TEXT PRIMARY KEY,
    displayname TEXT,
    avatar_url TEXT
);

-- room_id is '' for global account data.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_id);

CREATE TABLE user_filters (
    user_id TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE INDEX user_filters_user ON user_filters (user_id);
