-- Quarantine by content (issue 11, finding 11): quarantining a media id also
-- quarantines its sha256, so the same bytes uploaded again under a new id are
-- quarantined too, and no media with a quarantined hash is served. Kept apart from
-- local_media so the hash stays quarantined even if every row holding it is deleted.
CREATE TABLE quarantined_media_hashes (
    sha256 TEXT PRIMARY KEY,
    quarantined_by TEXT NOT NULL,
    quarantined_ts BIGINT NOT NULL
);
