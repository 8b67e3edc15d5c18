-- GDPR erasure (homeserver/gdpr/erasure.py, erasure_purge.py) and audit pseudonyms.

-- Audit chain version 2 (homeserver/audit/chain.py): the keyed hashes (HMAC-SHA256 under
-- the server's audit key) of an entry's identifiers, as JSON; the entry hash covers these
-- instead of the raw identifiers, so erasure can replace the raw values by pseudonyms.
-- NULL: a version 1 entry (raw identifiers hashed).
ALTER TABLE security_events ADD COLUMN id_macs TEXT;

-- One purge job per erased user: after the grace window it deletes the remaining
-- personal data step by step. ``step`` is the next step to run and ``step_cursor`` the
-- position inside a batched step, so a crash resumes where it stopped. When the job
-- completes, user_id (and requested_by if it was the user) become the pseudonym.
CREATE TABLE erasure_jobs (
    job_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    requested_by TEXT,
    status TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    run_after_ts BIGINT NOT NULL,
    updated_ts BIGINT,
    step INTEGER NOT NULL DEFAULT 0,
    step_cursor TEXT,
    steps_total INTEGER NOT NULL,
    items BIGINT NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX erasure_jobs_due ON erasure_jobs (status, run_after_ts);
CREATE INDEX erasure_jobs_created ON erasure_jobs (created_ts);
