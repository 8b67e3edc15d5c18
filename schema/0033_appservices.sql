-- Application services (homeserver/appservice/): per service the id of the last
-- transaction it acknowledged and the highest stream ordering sent so far; the events
-- queued for it (written when an event it is interested in is persisted); the one
-- transaction in flight (kept until acknowledged, and resent with the same id and the
-- same events after a restart); and the per-network public room lists services publish.
CREATE TABLE appservice_state (
    as_id TEXT PRIMARY KEY,
    last_txn_id BIGINT NOT NULL DEFAULT 0,
    stream_position BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE appservice_queue (
    as_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (as_id, stream_ordering)
);
CREATE TABLE appservice_txns (
    as_id TEXT NOT NULL,
    txn_id BIGINT NOT NULL,
    event_ids TEXT NOT NULL,
    up_to BIGINT NOT NULL,
    PRIMARY KEY (as_id, txn_id)
);
CREATE TABLE appservice_room_list (
    as_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (as_id, network_id, room_id)
);
CREATE INDEX appservice_room_list_room ON appservice_room_list (room_id);
