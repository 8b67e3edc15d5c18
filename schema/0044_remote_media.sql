-- Remote media cache (issue 16): files of other servers fetched for local clients
-- (homeserver/media/remote.py). The file is in the media backend under
-- remote/<server>/<media id>; a row exists only once the file is stored. The cache is
-- bounded by media.remote_cache_max_bytes: the least recently used rows (and files)
-- are evicted. quarantined: an admin quarantined this media; its sha256 also goes to
-- quarantined_media_hashes, which is checked too, so quarantined bytes are never served
-- whatever server or id they come under.
CREATE TABLE remote_media_cache (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    last_access_ts BIGINT NOT NULL,
    quarantined SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX remote_media_cache_access ON remote_media_cache (last_access_ts);
