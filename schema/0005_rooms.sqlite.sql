INSERT INTO stream_positions (stream, pos) VALUES ('events', 0);
INSERT INTO stream_positions (stream, pos) VALUES ('state_groups', 0);
