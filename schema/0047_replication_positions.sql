-- Worker replication (issue 18, homeserver/replication/): each writer process's
-- readable stream positions ("persisted up to": every write at or below it has
-- committed). A worker that lost Redis or restarted reads them here to catch up, so it
-- never serves a position past a write still in flight.
CREATE TABLE replication_positions (
    stream TEXT NOT NULL,
    instance TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (stream, instance)
);
