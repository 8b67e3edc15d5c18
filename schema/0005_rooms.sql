-- Rooms, events and room state. See storage/stores/events.py and
-- storage/stores/state.py for how state is kept (state groups with deltas).
CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    is_public BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts BIGINT NOT NULL
);

-- Every event, as the signed PDU JSON. stream_ordering orders events as this server
-- persisted them (sync positions); depth orders them in the room DAG (/messages).
CREATE TABLE events (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL UNIQUE,
    depth BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL,
    txn_id TEXT,
    device_id TEXT,
    outlier BOOLEAN NOT NULL DEFAULT FALSE,
    rejected_reason TEXT
);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_room_depth ON events (room_id, depth, stream_ordering);

-- Idempotent sends: (room, user, device, txn id) -> event.
CREATE TABLE event_txn_ids (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    inserted_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, device_id, txn_id)
);

CREATE TABLE room_forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State groups: a group is the room state after some event. A group stores either
-- the full state (prev_group NULL) or a delta against prev_group; chains are kept
-- short by writing a full snapshot every few deltas.
CREATE TABLE state_groups (
    id BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    prev_group BIGINT,
    delta_depth INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE state_group_entries (
    state_group BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
);
-- The state group holding the state *after* each event.
CREATE TABLE event_state_groups (
    event_id TEXT PRIMARY KEY,
    state_group BIGINT NOT NULL
);

-- The current state of each room, for fast reads.
CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

-- Every membership event (history, for visibility and /members?at=).
CREATE TABLE room_memberships (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    membership TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, room_id, stream_ordering);

-- Each user's current membership per room (rooms for a user, sync).
CREATE TABLE local_current_membership (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    forgotten BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX local_current_membership_room ON local_current_membership (room_id, membership);

CREATE TABLE redactions (
    event_id TEXT PRIMARY KEY,
    redacts TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX redactions_redacts ON redactions (redacts);

CREATE TABLE room_aliases (
    room_alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);
