-- Which account a spent registration UIA session created (issue 12): re-sending the
-- completed registration request with the same session is answered with that account
-- instead of creating another one (Synapse's "registration is idempotent"). Written in
-- the transaction that creates the account and spends the session; removed with the
-- sessions of the same age by the UIA clean-up. created_ts is the session's.
CREATE TABLE ui_auth_registrations (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX ui_auth_registrations_created ON ui_auth_registrations (created_ts);
