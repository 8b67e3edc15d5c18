-- Custom profile fields (spec v1.16, GET/PUT/DELETE /profile/{userId}/{keyName}).
-- displayname and avatar_url stay in `profiles`; every other key (m.tz included) is
-- one row here, its value stored as JSON text. The 64 KiB limit on a whole profile
-- is enforced by the code that writes, under the `profiles` row lock.
CREATE TABLE profile_fields (
    user_id TEXT NOT NULL,
    field_name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (user_id, field_name)
);
