"""The homeserver's areas, each built by one function from its dependencies: accounts
(auth, sessions, devices, registration, profiles), rooms (the event path and what
reads rooms), e2ee (keys, device lists, to-device) and sync (long-poll and its
ephemeral sources). ``homeserver.app`` composes them; a worker role can later build
only the areas it serves."""
