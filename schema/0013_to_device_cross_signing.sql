-- To-device messages and cross-signing keys (homeserver/handlers/to_device.py,
-- homeserver/handlers/cross_signing.py).

-- One row per (recipient device, message). stream_id is the position of the
-- /sendToDevice request on the to_device stream (one request sends at most one message
-- to each device). delivered_at is the sync position (the to_device part of next_batch)
-- at which the message was first handed to the device; the row is deleted once that
-- device syncs with a token at or after it (at-least-once delivery).
CREATE TABLE device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    sender TEXT NOT NULL,
    message_type TEXT NOT NULL,
    content TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    delivered_at BIGINT,
    PRIMARY KEY (user_id, device_id, stream_id)
);
CREATE INDEX device_inbox_user_stream ON device_inbox (user_id, stream_id);

-- /sendToDevice transaction ids already handled, so a retried request is not re-queued.
CREATE TABLE to_device_txns (
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (sender, sender_device, txn_id)
);

-- The current cross-signing keys of each user: key_type is master, self_signing or
-- user_signing; key_json is the uploaded CrossSigningKey object (with signatures).
CREATE TABLE cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    updated_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Verified signatures uploaded with /keys/signatures/upload: the key signer_key_id of
-- signer_user_id signed target_id (a device id or a cross-signing public key) of
-- target_user_id.
CREATE TABLE cross_signing_signatures (
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (signer_user_id, signer_key_id, target_user_id, target_id)
);
CREATE INDEX cross_signing_signatures_target ON cross_signing_signatures (target_user_id, target_id);
