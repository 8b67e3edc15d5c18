INSERT INTO stream_positions (stream, pos) VALUES ('receipts', 0);
INSERT INTO stream_positions (stream, pos) VALUES ('presence', 0);
