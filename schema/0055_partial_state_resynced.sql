-- Rooms whose partial state (0050) was replaced by the full state, and the events-stream
-- position the resync took for it (a position without an event: a hole readers skip).
-- /sync leaves a partial-state room out unless the client lazy-loads members, so a
-- client whose token is before this position gets the room as newly joined (full
-- state) in its next sync (homeserver/handlers/sync.py); the position also wakes it.
CREATE TABLE partial_state_resynced (
    room_id TEXT PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX partial_state_resynced_pos ON partial_state_resynced (stream_ordering);
