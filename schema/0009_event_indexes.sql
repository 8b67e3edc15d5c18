-- History-visibility and membership-at-event lookups read one state key's changes;
-- /timestamp_to_event searches by origin_server_ts.
CREATE INDEX events_room_type_state ON events (room_id, type, state_key, stream_ordering);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
