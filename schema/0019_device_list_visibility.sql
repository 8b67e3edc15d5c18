-- Device-list changes seen by one user only (issue 12, as Synapse's "user signature
-- stream"): a new user-signing key is announced to its owner's devices alone, and a
-- signature on another user's master key to the signer alone, so nobody else learns of
-- either. NULL: the change is shown to everyone sharing a room with user_id.
ALTER TABLE device_lists_stream ADD COLUMN only_to TEXT;
