-- Pushers' pushkeys sealed at rest (storage/stores/pushers.py): a pushkey is a device's
-- push token, so with secrets.at_rest_key the column holds an envelope bound to its
-- (user, app) and pushkey_hash a keyed hash (HMAC-SHA256 under a key derived from the
-- key-encryption key, "<kid>:<hex>") for the (app_id, pushkey) lookups and uniqueness.
-- Rows from before keep a NULL hash and a plaintext pushkey (matched by value) until
-- their next write or `parley keys rotate`.
-- The primary key no longer stops a duplicate (each sealing is different): the hash, the
-- same for the same pushkey under the active key, does (NULLs, legacy rows, are exempt).
ALTER TABLE pushers ADD COLUMN pushkey_hash TEXT;
CREATE INDEX pushers_key_hash ON pushers (app_id, pushkey_hash);
CREATE UNIQUE INDEX pushers_user_key_hash ON pushers (user_id, app_id, pushkey_hash);
