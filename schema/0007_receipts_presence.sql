-- Read receipts and presence (see storage/stores/receipts.py and presence.py).
-- Typing notifications are not stored: they live in memory for seconds.

-- The latest receipt of each (room, type, user, thread): m.read and m.read.private.
-- thread_id '' is an unthreaded receipt ('main' or a thread root's event id otherwise).
-- event_stream_ordering lets a write refuse to move a receipt backwards without reading
-- the events; stream_id is the write's position on the receipts stream, so /sync can
-- ask which receipts changed after a position.
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_stream_ordering BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id);

-- The last notified presence of each local user. stream_id is the position of the
-- last change worth telling others about on the presence stream.
CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    last_sync_ts BIGINT NOT NULL,
    currently_active BOOLEAN NOT NULL,
    stream_id BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);
