"""Federation rigs and scenarios over TLS on loopback: Parley↔Parley (used by
tests/e2e/test_two_servers.py) and Parley↔Synapse (``make interop``)."""
