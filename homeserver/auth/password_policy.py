"""The password policy: length, character classes and an optional breached list."""

from __future__ import annotations

import hashlib
import re

from homeserver.config.model import PasswordPolicyConfig
from homeserver.http.errors import Codes, MatrixError

_HEX40 = re.compile(r"^[0-9A-Fa-f]{40}(:\d+)?$")


def load_breached_list(path: str) -> frozenset[str]:
    """Lines are plaintext passwords or SHA-1 hex digests (HIBP ``HASH:count`` works).
    Kept as upper-case SHA-1 digests only."""
    digests = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            if _HEX40.fullmatch(line):
                digests.add(line.split(":", 1)[0].upper())
            else:
                digests.add(hashlib.sha1(line.encode("utf-8")).hexdigest().upper())
    return frozenset(digests)


class PasswordPolicy:
    def __init__(self, config: PasswordPolicyConfig) -> None:
        self._config = config
        self._breached: frozenset[str] = frozenset()
        if config.enabled and config.breached_list_file:
            self._breached = load_breached_list(config.breached_list_file)

    def check(self, password: str) -> None:
        """Raise 400 ``M_WEAK_PASSWORD`` naming the rule a password breaks."""
        c = self._config
        if not c.enabled:
            return
        problems = []
        if len(password) < c.min_length:
            problems.append(f"be at least {c.min_length} characters long")
        if c.require_digit and not re.search(r"\d", password):
            problems.append("contain a digit")
        if c.require_symbol and not re.search(r"[^\w\s]|_", password):
            problems.append("contain a symbol")
        if c.require_lowercase and not re.search(r"[a-z]", password):
            problems.append("contain a lowercase letter")
        if c.require_uppercase and not re.search(r"[A-Z]", password):
            problems.append("contain an uppercase letter")
        if problems:
            raise MatrixError(400, "Password must " + ", ".join(problems), Codes.WEAK_PASSWORD)
        if self._breached:
            digest = hashlib.sha1(password.encode("utf-8")).hexdigest().upper()
            if digest in self._breached:
                raise MatrixError(
                    400, "This password appears in a list of breached passwords",
                    Codes.WEAK_PASSWORD,
                )
