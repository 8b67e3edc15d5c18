CREATE SEQUENCE events_stream_seq;
CREATE SEQUENCE state_groups_stream_seq;
