CREATE SEQUENCE to_device_stream_seq;
