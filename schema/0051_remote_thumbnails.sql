-- Thumbnails of other servers' media, cached (homeserver/media/remote.py). A request
-- maps to one of media.thumbnail_sizes, so a remote media has at most that many cached
-- sizes per content type. The file is in the media backend under
-- remote_thumbnails/<server>/<media id>/<w>-<h>-<method>-<type>; a row exists only once
-- the file is stored. Counted with remote_media_cache in media.remote_cache_max_bytes
-- and evicted with it, least recently served first; dropped when the origin media is
-- quarantined or purged (POST /_synapse/admin/v1/purge_media_cache).
CREATE TABLE remote_media_thumbnails (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    last_access_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, content_type)
);
CREATE INDEX remote_media_thumbnails_access ON remote_media_thumbnails (last_access_ts);
