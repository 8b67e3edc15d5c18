-- How far each events writer other than main (an event_persister worker, issue 18) has
-- looked at the local events it persisted, for the federation queue: on start it queues
-- again its rooms' local events after this point (as federation_stream_position does for
-- the main process), so an event persisted just before a crash still goes out.
CREATE TABLE federation_writer_positions (
    instance TEXT PRIMARY KEY,
    stream_ordering BIGINT NOT NULL
);
