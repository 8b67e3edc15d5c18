-- One row per room: the current-state facts the room directory (/publicRooms) and the
-- user directory need, so both are answered by one indexed query instead of reading
-- every room's state. Kept up to date after each persisted state event of a tracked
-- type (homeserver/handlers/directory.py, RoomStatsUpdater); rooms without a row are
-- filled in at start-up. search_text is name, topic and canonical alias lowercased
-- in Python (SQLite's LOWER() only folds ASCII).
CREATE TABLE room_stats_state (
    room_id TEXT PRIMARY KEY,
    name TEXT,
    topic TEXT,
    canonical_alias TEXT,
    avatar TEXT,
    join_rules TEXT,
    history_visibility TEXT,
    guest_access TEXT,
    room_type TEXT,
    joined_members INTEGER NOT NULL DEFAULT 0,
    search_text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX room_stats_state_order ON room_stats_state (joined_members, room_id);
