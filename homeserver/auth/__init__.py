"""Authentication: access/refresh tokens, passwords, user-interactive auth."""
