-- Backfilled and outlier events take negative stream orderings (-next), so they sort
-- before all history and no "events after position N" reader ever sees them.
INSERT INTO stream_positions (stream, pos) VALUES ('events_backfill', 0);
