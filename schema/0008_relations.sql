-- Event relations, threads, server-side search, pushers and content reports
-- (homeserver/handlers/relations.py, search.py; storage/stores/relations.py, search.py,
-- pushers.py, reports.py).

-- One row per event carrying a valid m.relates_to (rel_type + event_id), written by an
-- after_persist hook and caught up at start-up from event_index_progress. The child's
-- sender/type/ts/position are copied so bundled aggregations and /relations pages are
-- answered from this table alone; a redaction of the child deletes its row (a redacted
-- event no longer relates to anything).
CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    relates_to_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    aggregation_key TEXT,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    is_state BOOLEAN NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to_id, stream_ordering);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, stream_ordering);

-- How far each derived index has looked at the events table ('relations', 'search'):
-- start-up catches up from here, so an event persisted just before a crash (whose hook
-- never ran) is still indexed.
CREATE TABLE event_index_progress (
    name TEXT PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);

-- Plaintext bodies of m.room.message events in unencrypted rooms, only while
-- search.enabled is true (emptied at start-up when it is false). body is casefolded.
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);

-- Pushers (POST /pushers/set); stored only, delivery comes later. data is JSON.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    device_id TEXT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);

-- Reports of events, rooms and users for admins: who reported what and why, never a
-- copy of the content. kind is 'event', 'room' or 'user'.
CREATE TABLE content_reports (
    id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    reporter TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    target_user_id TEXT,
    reason TEXT,
    score INTEGER,
    received_ts BIGINT NOT NULL
);
CREATE INDEX content_reports_ts ON content_reports (received_ts);
