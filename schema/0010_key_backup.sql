-- Server-side key backups (homeserver/handlers/key_backup.py, storage/stores/key_backup.py).
-- The server stores what clients send and never decrypts it: auth_data and session_data
-- are JSON text.

-- One row per user who ever created a backup: the last version number handed out, so a
-- new version is always greater than every earlier one, deleted or not. Every write to a
-- user's backups first locks this row, serialising them (concurrent uploads of the same
-- session from several devices are the normal case).
CREATE TABLE room_key_backup_users (
    user_id TEXT PRIMARY KEY,
    last_version BIGINT NOT NULL
);

-- Live backup versions; a deleted version's row is removed with its keys. The current
-- version is the user's highest. etag is bumped whenever the version's keys change;
-- key_count is kept in step with room_key_backup_keys so uploads need no COUNT(*).
CREATE TABLE room_key_backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL,
    key_count BIGINT NOT NULL,
    PRIMARY KEY (user_id, version)
);

-- The backed-up room keys: the metadata the replacement rules compare, and the
-- encrypted session_data (a JSON object) as the client sent it.
CREATE TABLE room_key_backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
