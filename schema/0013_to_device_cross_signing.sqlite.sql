INSERT INTO stream_positions (stream, pos) VALUES ('to_device', 0);
