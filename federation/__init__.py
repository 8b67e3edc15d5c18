"""The server-server API: signed JSON, server keys, X-Matrix auth, transactions,
state resolution. Disabled by config (``federation.enabled: false``) until built."""
