-- Starts at 2: position 1 is "before any change", so a token at 0 always means initial sync.
CREATE SEQUENCE device_lists_stream_seq START 2;
