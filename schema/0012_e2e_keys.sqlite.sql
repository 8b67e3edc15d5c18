-- Position 1 is "before any change" (see 0012_e2e_keys.postgres.sql).
INSERT INTO stream_positions (stream, pos) VALUES ('device_lists', 1);
