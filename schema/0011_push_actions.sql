-- Push actions per (user, event), recorded when a local event is persisted
-- (homeserver/handlers/push_actions.py). Unread counts in /sync and GET /notifications
-- read them: rows after the user's latest read receipt in a room are unread.
-- thread_id is 'main' for events outside a thread, else the thread root's event id.
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    notify SMALLINT NOT NULL,
    highlight SMALLINT NOT NULL,
    thread_id TEXT NOT NULL,
    actions TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX event_push_actions_user_room ON event_push_actions (user_id, room_id, stream_ordering);
CREATE INDEX event_push_actions_user_stream ON event_push_actions (user_id, stream_ordering);
