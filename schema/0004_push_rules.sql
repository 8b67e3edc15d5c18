-- Push rules (GET/PUT/DELETE /pushrules/...). The server-default rules live in code
-- (homeserver/push/default_rules.py); only what a user changed is stored.

-- User-defined rules. Within (user_id, kind) a higher priority is evaluated first.
-- conditions/actions are JSON arrays; pattern is set for content rules only.
CREATE TABLE push_rules (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    priority BIGINT NOT NULL,
    conditions TEXT NOT NULL,
    pattern TEXT,
    actions TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (user_id, kind, rule_id)
);
CREATE INDEX push_rules_order ON push_rules (user_id, kind, priority);

-- A user's changes to server-default rules; NULL keeps the default's value.
CREATE TABLE push_rule_defaults (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    enabled BOOLEAN,
    actions TEXT,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- Position (on the account_data stream) of each user's last push rule change, so
-- /sync can tell when to send m.push_rules again. Writing it first in every change
-- also serialises concurrent changes of one user (the row lock).
CREATE TABLE push_rules_changes (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL
);
