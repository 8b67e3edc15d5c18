-- HTTP pusher delivery (homeserver/push/sender/): per pusher, the stream ordering of
-- the last push action handled (sent, or given up on), so a restart neither skips nor
-- repeats notifications; when it last succeeded; and since when it has been failing
-- (a pusher failing for a day drops the notification it is stuck on, as Synapse).
ALTER TABLE pushers ADD COLUMN last_stream_ordering BIGINT NOT NULL DEFAULT 0;
ALTER TABLE pushers ADD COLUMN last_success_ts BIGINT;
ALTER TABLE pushers ADD COLUMN failing_since BIGINT;
-- Pushers that existed before delivery did start from now, not from all history.
UPDATE pushers SET last_stream_ordering = COALESCE((SELECT MAX(stream_ordering) FROM events), 0);
