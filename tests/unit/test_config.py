"""Config loading: schema validation names the offending key; secrets from env/files."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial import unittest

from homeserver.auth.access_tokens import generate_signing_key_pem
from homeserver.cli import generate_config_text
from homeserver.config import ConfigError, load_config, parse_config
from homeserver.config.loader import parse_duration


def minimal(**extra: object) -> dict:
    base: dict = {
        "server_name": "example.org",
        "auth": {"signing_keys": [{"kid": "a", "algorithm": "EdDSA",
                                   "key": generate_signing_key_pem()}]},
    }
    base.update(extra)
    return base


class ConfigTest(unittest.TestCase):
    def test_defaults(self) -> None:
        c = parse_config(minimal())
        self.assertEqual(c.auth.access_token_lifetime, 900)
        self.assertEqual(c.auth.refresh_token_lifetime, 30 * 86400)
        self.assertEqual(c.auth.clock_skew, 60)
        self.assertEqual(c.auth.audience, "example.org")
        self.assertEqual(c.password_hashing.memory_cost_kib, 65536)
        self.assertEqual(c.password_hashing.time_cost, 1)
        self.assertEqual(c.password_hashing.parallelism, 2)
        self.assertFalse(c.registration.enabled)
        self.assertFalse(c.registration.allow_guests)
        self.assertEqual(c.database.engine, "sqlite")

    def test_unknown_key_is_named(self) -> None:
        with self.assertRaisesRegex(ConfigError, "unknown key 'registration.enabeld'"):
            parse_config(minimal(registration={"enabeld": True}))
        with self.assertRaisesRegex(ConfigError, "unknown key 'colour'"):
            parse_config(minimal(colour="blue"))

    def test_wrong_type_is_named(self) -> None:
        with self.assertRaisesRegex(ConfigError, "'registration.enabled': expected boolean"):
            parse_config(minimal(registration={"enabled": "yes"}))
        with self.assertRaisesRegex(ConfigError, "listeners.0.port"):
            parse_config(minimal(listeners=[{"port": "8008"}]))

    def test_missing_server_name(self) -> None:
        with self.assertRaisesRegex(ConfigError, "missing required key 'server_name'"):
            parse_config({})

    def test_no_signing_key(self) -> None:
        with self.assertRaisesRegex(ConfigError, "auth.signing_keys"):
            parse_config({"server_name": "x.org"})

    def test_secret_from_env_and_file(self) -> None:
        os.environ["PARLEY_TEST_DB_PW"] = "from-env"
        self.addCleanup(os.environ.pop, "PARLEY_TEST_DB_PW")
        c = parse_config(minimal(database={"engine": "postgres",
                                           "password": {"env": "PARLEY_TEST_DB_PW"}}))
        self.assertEqual(c.database.password, "from-env")
        self.assertNotIn("from-env", repr(c))
        with tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False) as f:
            f.write("from-file\n")
        self.addCleanup(os.unlink, f.name)
        c = parse_config(minimal(registration={"shared_secret": {"file": f.name}}))
        self.assertEqual(c.registration.shared_secret, "from-file")
        self.assertNotIn("from-file", repr(c))

    def test_missing_env_secret(self) -> None:
        with self.assertRaisesRegex(ConfigError, "PARLEY_SURELY_UNSET"):
            parse_config(minimal(registration={"shared_secret": {"env": "PARLEY_SURELY_UNSET"}}))

    def test_durations(self) -> None:
        self.assertEqual(parse_duration("15m"), 900)
        self.assertEqual(parse_duration("500ms"), 0.5)
        self.assertEqual(parse_duration(30), 30)
        with self.assertRaisesRegex(ConfigError, "auth.access_token_lifetime"):
            parse_config(minimal(auth={**minimal()["auth"], "access_token_lifetime": "soon"}))

    def test_active_kid_must_sign(self) -> None:
        keys = [{"kid": "old", "algorithm": "EdDSA", "key": generate_signing_key_pem(),
                 "verify_only": True}]
        with self.assertRaisesRegex(ConfigError, "active_kid"):
            parse_config(minimal(auth={"signing_keys": keys}))

    def test_generated_config_loads(self) -> None:
        d = tempfile.mkdtemp()
        path = os.path.join(d, "c.yaml")
        with open(path, "w") as f:
            f.write(generate_config_text("localhost", "data", 8008, dev=True))
        c = load_config(path)
        self.assertTrue(c.registration.enabled)
        self.assertEqual(c.listeners[0].bind_addresses, ["127.0.0.1"])
        self.assertEqual(c.database.path, os.path.join(d, "data", "parley.db"))
        prod = parse_config(__import__("yaml").safe_load(
            generate_config_text("example.org", "/var/lib/parley", 8008, dev=False)))
        self.assertFalse(prod.registration.enabled)

    def test_unreadable_or_invalid_yaml(self) -> None:
        with self.assertRaisesRegex(ConfigError, "cannot read"):
            load_config("/nonexistent/parley.yaml")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write("server_name: [unclosed\n")
        self.addCleanup(os.unlink, f.name)
        with self.assertRaisesRegex(ConfigError, "not valid YAML"):
            load_config(f.name)

    def test_duplicate_key_refused(self) -> None:
        """A section given twice (e.g. `rate_limits: {backend: redis}` appended to a
        generated config that already has `rate_limits:`) is an error naming the key,
        not the last one silently winning."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "c.yaml")
        text = generate_config_text("localhost", "data", 8008, dev=True)
        self.assertIn("\nrate_limits:", text)
        with open(path, "w") as f:
            f.write(text + "rate_limits: {backend: redis}\n")
        with self.assertRaisesRegex(ConfigError, "duplicate key 'rate_limits'"):
            load_config(path)
        with open(path, "w") as f:  # nested mappings too
            f.write(text + "redis: {host: a, port: 6379, host: b}\n")
        with self.assertRaisesRegex(ConfigError, "duplicate key 'host'"):
            load_config(path)


class CachesAndGcConfigTest(unittest.TestCase):
    """``caches`` and ``gc_thresholds`` (issue 18): defaults, values given, bounds."""

    def test_defaults(self) -> None:
        c = parse_config(minimal())
        self.assertEqual(c.event_cache_size, 100_000)
        self.assertEqual(c.state_cache_entries, 250_000)
        self.assertEqual(c.gc_thresholds, (50_000, 20, 10))

    def test_given(self) -> None:
        c = parse_config(minimal(caches={"event_cache_size": 0, "state_cache_entries": 10},
                                 gc_thresholds=[700, 10, 10]))
        self.assertEqual((c.event_cache_size, c.state_cache_entries), (0, 10))
        self.assertEqual(c.gc_thresholds, (700, 10, 10))

    def test_out_of_range_refused(self) -> None:
        for bad in ({"caches": {"event_cache_size": -1}},
                    {"caches": {"event_cache_size": 10**9}},
                    {"gc_thresholds": [700, 10]}, {"gc_thresholds": [0, 10, 10]},
                    {"gc_thresholds": ["a", 1, 1]}):
            with self.assertRaises(ConfigError, msg=bad):
                parse_config(minimal(**bad))
