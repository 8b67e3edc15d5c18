-- OpenID tokens (POST /user/{userId}/openid/request_token), exchanged by third parties
-- at GET /_matrix/federation/v1/openid/userinfo. Only the SHA-256 hash of a token is
-- stored; expired rows are deleted whenever a new token is issued.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expires ON openid_tokens (expires_ts);
CREATE INDEX openid_tokens_user ON openid_tokens (user_id);
