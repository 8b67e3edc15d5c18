-- The federation sender (federation/sender/) and inbound /send (federation/send_servlet.py).
--
-- federation_destinations: per remote server, its backoff (Synapse's
-- destinations table: failure_ts, retry_last_ts, retry_interval in ms), the counter of
-- our transaction ids to it, and the highest stream ordering it acknowledged.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    failure_ts BIGINT,
    retry_last_ts BIGINT NOT NULL DEFAULT 0,
    retry_interval BIGINT NOT NULL DEFAULT 0,
    last_txn_seq BIGINT NOT NULL DEFAULT 0,
    last_successful_stream_ordering BIGINT,
    last_success_ts BIGINT
);
-- PDUs waiting for a destination (written when a local event is persisted).
CREATE TABLE federation_pdu_queue (
    destination TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (destination, stream_ordering)
);
CREATE INDEX federation_pdu_queue_room ON federation_pdu_queue (destination, room_id,
                                                               stream_ordering);
-- EDUs waiting for a destination; a row with a coalesce_key replaces the older one with
-- the same key (the latest presence of a user, receipt of a user in a room).
CREATE TABLE federation_edu_queue (
    destination TEXT NOT NULL,
    seq BIGINT NOT NULL,
    edu_type TEXT NOT NULL,
    coalesce_key TEXT,
    content TEXT NOT NULL,
    PRIMARY KEY (destination, seq)
);
CREATE INDEX federation_edu_queue_key ON federation_edu_queue (destination, coalesce_key);
-- The transaction in flight to a destination: exactly what was (or is being) sent, so
-- after a crash it is sent again with the same id and body, and its queue rows are gone.
CREATE TABLE federation_outbound_txns (
    destination TEXT PRIMARY KEY,
    txn_id TEXT NOT NULL,
    body TEXT NOT NULL,
    up_to BIGINT NOT NULL,
    pdu_count INTEGER NOT NULL,
    edu_count INTEGER NOT NULL,
    created_ts BIGINT NOT NULL
);
-- Transactions received, with the answer given, so a retried one gets the same answer.
CREATE TABLE federation_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_ts ON federation_inbound_txns (received_ts);
-- The stream id of the last m.device_list_update sent for a local user (its prev_id).
CREATE TABLE federation_device_list_sent (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL
);
-- Per destination and room: the stream ordering of the latest event queued for it
-- (Synapse's destination_rooms: the admin API's room list and catch-up).
CREATE TABLE federation_destination_rooms (
    destination TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (destination, room_id)
);
-- How far the sender has looked at local events (written every few seconds and at stop):
-- on start, local events after it are queued again unless a destination's room already
-- has a later event queued (federation_destination_rooms), so events persisted just
-- before a crash, whose fan-out never ran, still go out, and none goes out twice.
CREATE TABLE federation_stream_position (
    lock CHAR(1) NOT NULL DEFAULT 'X' PRIMARY KEY,
    stream_ordering BIGINT NOT NULL,
    CHECK (lock = 'X')
);
