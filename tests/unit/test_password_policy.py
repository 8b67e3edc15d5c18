"""Password policy rules and the breached-password list."""

from __future__ import annotations

import hashlib
import tempfile

from twisted.trial import unittest

from homeserver.auth.password_policy import PasswordPolicy
from homeserver.config.model import PasswordPolicyConfig
from homeserver.http.errors import MatrixError


class PolicyTest(unittest.TestCase):
    def assertWeak(self, policy: PasswordPolicy, password: str, fragment: str) -> None:  # noqa: N802
        with self.assertRaises(MatrixError) as cm:
            policy.check(password)
        self.assertEqual(cm.exception.errcode, "M_WEAK_PASSWORD")
        self.assertEqual(cm.exception.code, 400)
        self.assertIn(fragment, cm.exception.msg)
        self.assertNotIn(password, cm.exception.msg)

    def test_rules(self) -> None:
        policy = PasswordPolicy(PasswordPolicyConfig(
            min_length=10, require_digit=True, require_symbol=True, require_lowercase=True,
            require_uppercase=True))
        self.assertWeak(policy, "Ab1!", "at least 10")
        self.assertWeak(policy, "Abcdefghij!", "digit")
        self.assertWeak(policy, "Abcdefghij1", "symbol")
        self.assertWeak(policy, "ABCDEFGHIJ1!", "lowercase")
        self.assertWeak(policy, "abcdefghij1!", "uppercase")
        policy.check("Abcdefghij1!")

    def test_disabled(self) -> None:
        PasswordPolicy(PasswordPolicyConfig(enabled=False)).check("x")

    def test_breached_list_plain_and_sha1(self) -> None:
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("password123456\n")
            f.write(hashlib.sha1(b"letmein-please").hexdigest().upper() + ":4242\n")
        policy = PasswordPolicy(PasswordPolicyConfig(min_length=8, breached_list_file=f.name))
        self.assertWeak(policy, "password123456", "breached")
        self.assertWeak(policy, "letmein-please", "breached")
        policy.check("unbreached-passphrase")
