-- Events as a DAG (issue 16): remote, soft-failed, outlier and backfilled events.
-- soft_failed: an event that passed its auth events and the state before it but not
-- the room's current state; stored (others may cite it), never in the timeline, in
-- the current state nor among the forward extremities. Such events are also marked
-- outlier (as rejected ones are), which keeps them out of every client read.
ALTER TABLE events ADD COLUMN soft_failed BOOLEAN NOT NULL DEFAULT FALSE;
-- The state group holding the state *before* each event (event_state_groups.state_group
-- is the state after it): visibility is computed from the state at each event, which in
-- a forked room is not the state at the previous stream position. NULL: no state before
-- (the create event) or an outlier.
ALTER TABLE event_state_groups ADD COLUMN state_group_before BIGINT;
-- Rooms so far were linear: the state before an event is the state after the room's
-- previous event by stream ordering.
UPDATE event_state_groups SET state_group_before = (
    SELECT g.state_group FROM events e
    JOIN events p ON p.room_id = e.room_id AND p.stream_ordering < e.stream_ordering
    JOIN event_state_groups g ON g.event_id = p.event_id
    WHERE e.event_id = event_state_groups.event_id
    ORDER BY p.stream_ordering DESC LIMIT 1
);
