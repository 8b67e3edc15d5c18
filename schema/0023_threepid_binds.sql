-- 3PIDs a user bound to an identity server through this homeserver (POST
-- /account/3pid/bind). Parley keeps no email/phone association of its own: this only
-- remembers where to unbind from (on /3pid/unbind, /3pid/delete and deactivation).
CREATE TABLE threepid_binds (
    user_id TEXT NOT NULL,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    id_server TEXT NOT NULL,
    PRIMARY KEY (user_id, medium, address, id_server)
);
