-- Server notices (homeserver/handlers/server_notices.py): the room each user's notices go
-- to, created on the first notice (a new one if the user left it).
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- The new-IP / new-device login detector (homeserver/detection): per account, a SHA-256
-- of each IP address and device id that logged in (never the address itself).
CREATE TABLE known_logins (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    value_hash TEXT NOT NULL,
    first_seen_ts BIGINT NOT NULL,
    last_seen_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, kind, value_hash)
);
