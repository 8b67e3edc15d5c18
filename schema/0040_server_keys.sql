-- Federation signing keys (issue 16).
-- server_signing_key_history: every signing key this server has published, so
-- /_matrix/key/v2/server can list the retired ones in old_verify_keys (other servers
-- still verify our old events with them). expired_ts is NULL for the key in use.
CREATE TABLE server_signing_key_history (
    key_id TEXT PRIMARY KEY,
    verify_key TEXT NOT NULL,
    first_seen_ts BIGINT NOT NULL,
    expired_ts BIGINT
);
-- remote_server_keys: the cache of other servers' keys, one row per (server, key id).
-- valid_until_ts is already capped (7 days after fetching, as the spec requires);
-- expired_ts is set for keys served as old_verify_keys. key_json is the whole signed
-- response the key came in (what a notary query is answered with); from_server is who
-- answered (the server itself or a trusted notary).
CREATE TABLE remote_server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    from_server TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
CREATE INDEX remote_server_keys_fetched ON remote_server_keys (fetched_ts);
