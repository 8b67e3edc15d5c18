-- Rooms joined with partial state (faster joins, spec v1.6 `omit_members`): the
-- resident server left most m.room.member events out of its send_join answer, so the
-- room's state here lacks them until the background resync (homeserver/handlers/
-- partial_state.py) fetches the full state at the join event and clears the row.
-- A restart resumes every resync still listed.
CREATE TABLE partial_state_rooms (
    room_id TEXT PRIMARY KEY,
    join_event_id TEXT NOT NULL,
    resident TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
-- The send_join answer's `servers_in_room`: while the state lacks the members, our
-- events also go to these servers (storage/stores/federation_queue.py joined_servers).
CREATE TABLE partial_state_room_servers (
    room_id TEXT NOT NULL,
    server_name TEXT NOT NULL,
    PRIMARY KEY (room_id, server_name)
);
