CREATE SEQUENCE receipts_stream_seq;
CREATE SEQUENCE presence_stream_seq;
