-- Bumped by every change to a stored event other than its first insert (its JSON pruned
-- by erasure, an outlier promoted into the timeline, history purged or a room deleted),
-- in the transaction that makes it. Each process's cache of decoded events
-- (storage/stores/event_cache.py) reads it with the events it reads and empties itself
-- when it moved, so no process serves an event changed by another.
CREATE TABLE event_cache_epoch (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO event_cache_epoch (id, epoch) VALUES (1, 0);
