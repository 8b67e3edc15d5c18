-- Users who deactivated with "erase": true (issue 12, as Synapse's erased_users). Their
-- events are served redacted (content pruned) to everyone who was not joined to the room
-- when the event was sent: only the original audience keeps seeing them.
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY,
    erased_ts BIGINT NOT NULL
);
