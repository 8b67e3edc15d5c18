-- Backfilled and outlier events take negative stream orderings (-nextval), so they sort
-- before all history and no "events after position N" reader ever sees them.
CREATE SEQUENCE events_backfill_stream_seq;
