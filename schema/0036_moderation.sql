-- Moderation (issue 15): event-report triage, protected media, shadow-bans and blocked
-- remote servers. Metadata only: no message content is copied anywhere.
--
-- A report an admin resolved: by whom, when, and their note (the report stays listed,
-- filterable with ?resolved=).
ALTER TABLE content_reports ADD COLUMN resolved_by TEXT;
ALTER TABLE content_reports ADD COLUMN resolved_ts BIGINT;
ALTER TABLE content_reports ADD COLUMN resolution TEXT;
CREATE INDEX content_reports_room ON content_reports (room_id);
-- Synapse's "safe_from_quarantine": the bulk quarantine calls (a user's, a room's media)
-- skip protected media.
ALTER TABLE local_media ADD COLUMN protected SMALLINT NOT NULL DEFAULT 0;
-- Shadow-banned users: their sends, state, invites and typing answer success but are
-- neither stored nor delivered (homeserver/handlers/shadow_ban.py).
CREATE TABLE shadow_banned_users (
    user_id TEXT PRIMARY KEY,
    banned_by TEXT NOT NULL,
    banned_ts BIGINT NOT NULL
);
-- Remote servers an admin blocked (plus federation.blocked_servers from the config):
-- local invites to their users are refused; federation will consult it too.
CREATE TABLE blocked_servers (
    server_name TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL,
    reason TEXT
);
