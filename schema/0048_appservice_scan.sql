-- Application services: how far the fan-out is known to have looked at persisted events
-- for them (one row). On start, events after it are looked at again (queued unless
-- already queued or acknowledged), so a crash between storing an event and queueing it
-- for its services loses nothing (homeserver/appservice/handler.py replay).
CREATE TABLE appservice_scan_position (
    lock CHAR(1) PRIMARY KEY CHECK (lock = 'X'),
    stream_ordering BIGINT NOT NULL
);
