"""The ``federation`` config section: defaults, parsing, and refused values (the
test-only plain-HTTP switch is not accepted from a config file)."""

from __future__ import annotations

from twisted.trial import unittest

from homeserver.config import ConfigError, parse_config
from tests.unit.test_config import minimal

KEY = "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"


class FederationConfigTest(unittest.TestCase):
    def test_defaults(self) -> None:
        fed = parse_config(minimal()).federation
        self.assertFalse(fed.enabled)
        self.assertEqual(fed.key_validity_period, 86400)
        self.assertEqual(fed.trusted_key_servers, ())
        self.assertIsNone(fed.allowed_servers)
        self.assertIsNone(fed.tls_ca_file)
        self.assertEqual(fed.ip_range_allowlist, ())
        self.assertFalse(fed.plain_http_for_tests)
        self.assertTrue(fed.server_allowed("anything.example"))

    def test_parsed(self) -> None:
        fed = parse_config(minimal(federation={
            "enabled": True, "key_validity_period": "12h",
            "trusted_key_servers": [{"server_name": "Notary.Example",
                                     "verify_keys": {"ed25519:a": KEY}}],
            "allowed_servers": ["A.example", "b.example:8448"],
            "tls_ca_file": "/etc/ca.pem", "ip_range_allowlist": ["10.0.0.0/8"],
            "request_timeout": "5s", "max_response_size": 65536,
        })).federation
        self.assertTrue(fed.enabled)
        self.assertEqual(fed.key_validity_period, 12 * 3600)
        self.assertEqual(fed.trusted_key_servers[0].server_name, "notary.example")
        self.assertTrue(fed.server_allowed("a.example"))
        self.assertTrue(fed.server_allowed("b.example:8448"))
        self.assertFalse(fed.server_allowed("c.example"))
        self.assertEqual(fed.tls_ca_file, "/etc/ca.pem")
        self.assertEqual(fed.request_timeout, 5)

    def test_refused(self) -> None:
        bad = [
            ({"ip_range_allowlist": ["not-a-range"]}, "ip_range_allowlist"),
            ({"trusted_key_servers": [{"server_name": "n", "verify_keys": {"rsa:a": KEY}}]},
             "verify_keys"),
            ({"trusted_key_servers": [{"server_name": "n", "verify_keys": {"ed25519:a": "xx"}}]},
             "verify_keys"),
            ({"plain_http_for_tests": True}, "plain_http_for_tests"),
            ({"tls_verify": False}, "tls_verify"),
            ({"max_response_size": 10}, "max_response_size"),
        ]
        for section, named in bad:
            with self.assertRaisesRegex(ConfigError, named, msg=str(section)):
                parse_config(minimal(federation={"enabled": True, **section}))
