-- Admin roles and account restrictions (issue 15; homeserver/auth/roles.py,
-- storage/stores/roles.py). ``admin_role`` names a built-in or configured role (NULL:
-- none); ``is_admin`` stays the "admin" role so older code keeps its meaning.
-- ``locked``: every token answers 401 M_USER_LOCKED and login is refused.
-- ``suspended``: read-only account (403 M_USER_SUSPENDED on writes, per the spec).
-- ``password_reset_required``: login answers 403 until an admin/support resets it.
ALTER TABLE users ADD COLUMN admin_role TEXT;
ALTER TABLE users ADD COLUMN locked BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN suspended BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN password_reset_required BOOLEAN NOT NULL DEFAULT FALSE;
