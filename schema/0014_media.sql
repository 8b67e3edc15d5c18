-- Local media (POST /_matrix/media/v3/upload, /v1/create + PUT). Metadata only:
-- owner, size, sha256, content type, created_at (+ quarantine flag); the filename
-- a client sends is deliberately NOT stored (data minimisation).
-- A row with size NULL is a reserved-but-not-yet-uploaded media id (/v1/create),
-- which expires at unused_expires_ts.
CREATE TABLE local_media (
    media_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    content_type TEXT,
    size BIGINT,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    unused_expires_ts BIGINT,
    quarantined SMALLINT NOT NULL DEFAULT 0
);
CREATE INDEX local_media_owner ON local_media (owner);
CREATE INDEX local_media_sha256 ON local_media (sha256);
-- Generated thumbnails, cached per (media, size, method).
CREATE TABLE local_media_thumbnails (
    media_id TEXT NOT NULL REFERENCES local_media (media_id) ON DELETE CASCADE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (media_id, width, height, method)
);
