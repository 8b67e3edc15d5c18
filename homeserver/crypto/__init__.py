"""Cryptography the server applies to its own data: envelope encryption of server-held
secrets at rest (:mod:`homeserver.crypto.at_rest`) and the encrypted signing-key file
(:mod:`homeserver.crypto.signing_key_file`)."""
