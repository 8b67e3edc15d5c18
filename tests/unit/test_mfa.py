"""The pure parts of TOTP two-factor login: code windows, lockout backoff, recovery-code
format, flows with a second factor, the mfa.required route allow-list, config."""

from __future__ import annotations

import pyotp
from twisted.internet import task
from twisted.trial import unittest

from homeserver.auth.mfa import (
    CodeLockout,
    gate_allows,
    matching_step,
    new_recovery_code,
    normalise_recovery_code,
)
from homeserver.auth.mfa_config import MfaConfig, parse_mfa
from homeserver.auth.ui_auth import PASSWORD, RECOVERY_CODE, TOTP, with_second_factor
from homeserver.clock import Clock
from homeserver.config.loader import ConfigError
from homeserver.http.errors import MatrixError
from tests.harness import make_config

SECRET = pyotp.random_base32()
NOW = 1_700_000_015.0  # 15 s into a step


class MatchingStepTest(unittest.TestCase):
    def test_current_and_adjacent_steps(self) -> None:
        totp = pyotp.TOTP(SECRET)
        step = int(NOW // 30)
        self.assertEqual(matching_step(SECRET, totp.at(NOW), NOW), step)
        self.assertEqual(matching_step(SECRET, totp.at(NOW - 30), NOW), step - 1)
        self.assertEqual(matching_step(SECRET, totp.at(NOW + 30), NOW), step + 1)

    def test_outside_window_or_malformed(self) -> None:
        totp = pyotp.TOTP(SECRET)
        near = {totp.at(NOW + d) for d in (-30, 0, 30)}
        far = totp.at(NOW - 90)
        if far not in near:
            self.assertIsNone(matching_step(SECRET, far, NOW))
        for bad in ("", "12345", "1234567", "abcdef", " 12345"):
            self.assertIsNone(matching_step(SECRET, bad, NOW))

    def test_another_secret_does_not_match(self) -> None:
        other = pyotp.random_base32()
        code = pyotp.TOTP(other).at(NOW)
        if code not in {pyotp.TOTP(SECRET).at(NOW + d) for d in (-30, 0, 30)}:
            self.assertIsNone(matching_step(SECRET, code, NOW))


class RecoveryCodeFormatTest(unittest.TestCase):
    def test_shape_and_normalisation(self) -> None:
        codes = {new_recovery_code() for _ in range(50)}
        self.assertEqual(len(codes), 50)
        for code in codes:
            groups = code.split("-")
            self.assertEqual([len(g) for g in groups], [4, 4, 4])
            self.assertEqual(normalise_recovery_code(code.upper().replace("-", " ")),
                             code.replace("-", ""))


class LockoutTest(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = task.Clock()
        self.reactor.advance(NOW)
        self.lockout = CodeLockout(Clock(self.reactor),
                                   MfaConfig(max_failures=3, lockout_s=10, max_lockout_s=25))

    def retry_ms(self) -> int:
        with self.assertRaises(MatrixError) as cm:
            self.lockout.check("@u:hs")
        self.assertEqual(cm.exception.code, 429)
        return int(cm.exception.to_json()["retry_after_ms"])

    def test_backoff_doubles_up_to_the_cap(self) -> None:
        expected = [10_000, 20_000, 25_000, 25_000]
        for want in expected:
            self.lockout.check("@u:hs")
            self.assertIsNone(self.lockout.failed("@u:hs"))
            self.assertIsNone(self.lockout.failed("@u:hs"))
            self.assertEqual(self.lockout.failed("@u:hs"), want / 1000)
            self.assertEqual(self.retry_ms(), want)
            self.lockout.check("@other:hs")  # others are not locked
            self.reactor.advance(want / 1000)
        self.lockout.check("@u:hs")

    def test_success_resets(self) -> None:
        self.lockout.failed("@u:hs")
        self.lockout.failed("@u:hs")
        self.lockout.succeeded("@u:hs")
        self.assertIsNone(self.lockout.failed("@u:hs"))
        self.assertIsNone(self.lockout.failed("@u:hs"))
        self.lockout.check("@u:hs")


class FlowsTest(unittest.TestCase):
    def test_each_flow_needs_a_second_factor(self) -> None:
        self.assertEqual(with_second_factor([[PASSWORD]]),
                         [[PASSWORD, TOTP], [PASSWORD, RECOVERY_CODE]])
        self.assertEqual(with_second_factor([[PASSWORD, TOTP]]), [[PASSWORD, TOTP]])

    def test_gate_allow_list(self) -> None:
        for ok in ("/_parley/client/v1/mfa", "/_parley/client/v1/mfa/totp/enroll",
                   "/_matrix/client/v3/logout", "/_matrix/client/r0/logout/all",
                   "/_matrix/client/v3/account/whoami"):
            self.assertTrue(gate_allows(ok), ok)
        for refused in ("/_matrix/client/v3/sync", "/_matrix/client/v3/devices",
                        "/_synapse/admin/v1/users/{userId}", "/_parley/admin/v1/mfa",
                        "/_matrix/client/v3/account/password"):
            self.assertFalse(gate_allows(refused), refused)


class ConfigTest(unittest.TestCase):
    def test_default_and_parsed(self) -> None:
        self.assertEqual(parse_mfa(None), MfaConfig())
        config, _ = make_config("/tmp", "sqlite")
        self.assertEqual(config.mfa.required, "none")
        config, _ = make_config("/tmp", "sqlite", mfa={"required": "admins", "issuer": "X"})
        self.assertEqual((config.mfa.required, config.mfa.issuer), ("admins", "X"))

    def test_bad_values_named(self) -> None:
        for bad in ({"required": "some"}, {"unknown": 1}, {"max_failures": 0}):
            with self.assertRaises(ConfigError) as cm:
                make_config("/tmp", "sqlite", mfa=bad)
            self.assertIn("mfa", str(cm.exception))
