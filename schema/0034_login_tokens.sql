-- Login tokens (POST /_matrix/client/v1/login/get_token, spent by POST /login with
-- type m.login.token): short-lived and single-use. Only the SHA-256 hash of a token is
-- stored; the issuing session is kept so that ending it (logout, password change)
-- also ends its unspent tokens. Expired rows are deleted whenever a token is issued.
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id TEXT,
    session_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    used_ts BIGINT
);
CREATE INDEX login_tokens_expires ON login_tokens (expires_ts);
CREATE INDEX login_tokens_user ON login_tokens (user_id);
