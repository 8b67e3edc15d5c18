INSERT INTO stream_positions (stream, pos) VALUES ('content_reports', 0);
