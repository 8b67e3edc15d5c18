"""Access tokens are JWTs signed with the server's key(s).

Several keys may be configured, each with a ``kid``: one signs, the others still
verify, so a key can be rotated without logging anybody out. Verification pins
the algorithm to the key named by ``kid`` (no algorithm confusion) and checks
expiry against our :class:`~homeserver.clock.Clock` with the configured skew.

The signature check costs as much as signing an event, on every request, so its result
(the parsed claims of a genuine token) is remembered per token string for a short while.
Only that is cached: the expiry and issued-at checks run on every call, and revocation
(the session check in :mod:`homeserver.auth.authenticator`) is not done here at all, so
a revoked or expired token is refused exactly as before. Rejections are never cached.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from homeserver.clock import Clock
from homeserver.config.model import AuthConfig, SigningKeyConfig
from homeserver.lru import LruCache

# Genuine tokens whose signature was checked recently (see the module docstring).
VERIFIED_CACHE_SIZE = 10_000
VERIFIED_CACHE_TTL_S = 60.0


class TokenError(Exception):
    """The token is not acceptable. ``expired`` means it was genuine but too old."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    device_id: str
    session_id: str
    token_id: str
    issued_at: int
    expires_at: int
    is_guest: bool = False


@dataclass(frozen=True)
class _Key:
    kid: str
    algorithm: str
    signing: Any
    verifying: Any
    can_sign: bool


def _load_key(cfg: SigningKeyConfig) -> _Key:
    if cfg.algorithm == "HS256":
        secret = cfg.key.encode("utf-8")
        if len(secret) < 32:
            raise ValueError(f"signing key {cfg.kid}: HS256 secrets must be at least 32 bytes")
        return _Key(cfg.kid, "HS256", secret, secret, not cfg.verify_only)
    pem = cfg.key.encode("ascii")
    if b"PRIVATE KEY" in pem:
        private = serialization.load_pem_private_key(pem, password=None)
        public = private.public_key()
    else:
        private = None
        public = serialization.load_pem_public_key(pem)
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    expected = ed25519.Ed25519PublicKey if cfg.algorithm == "EdDSA" else ec.EllipticCurvePublicKey
    if not isinstance(public, expected):
        raise ValueError(f"signing key {cfg.kid}: key type does not match {cfg.algorithm}")
    if private is None and not cfg.verify_only:
        raise ValueError(f"signing key {cfg.kid}: a public key can only be verify_only")
    return _Key(cfg.kid, cfg.algorithm, private, public, private is not None and not cfg.verify_only)


def generate_signing_key_pem(algorithm: str = "EdDSA") -> str:
    """A new private key in PEM, for ``parley generate-config``."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if algorithm == "EdDSA":
        key: Any = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"cannot generate a PEM key for {algorithm}")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


class AccessTokenCodec:
    """Issues and verifies access-token JWTs."""

    def __init__(self, config: AuthConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._keys = {k.kid: _load_key(k) for k in config.signing_keys}
        self._active = self._keys[config.active_kid]
        if not self._active.can_sign:
            raise ValueError(f"active signing key {config.active_kid} cannot sign")
        # token -> (claims, when its signature was checked)
        self._verified: LruCache[str, tuple[AccessClaims, float]] = LruCache(VERIFIED_CACHE_SIZE)

    def issue(
        self, user_id: str, device_id: str, session_id: str, lifetime: float,
        is_guest: bool = False,
    ) -> tuple[str, int]:
        """Return (token, expires_at_seconds)."""
        now = int(self._clock.time())
        exp = now + int(lifetime)
        claims = {
            "iss": self._config.issuer,
            "aud": self._config.audience,
            "sub": user_id,
            "device_id": device_id,
            "sid": session_id,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": exp,
        }
        if is_guest:
            claims["guest"] = True
        token = jwt.encode(
            claims, self._active.signing, algorithm=self._active.algorithm,
            headers={"kid": self._active.kid},
        )
        return token, exp

    def verify(self, token: str) -> AccessClaims:
        now = self._clock.time()
        hit = self._verified.get(token)
        if hit is not None and 0 <= now - hit[1] < VERIFIED_CACHE_TTL_S:
            claims = hit[0]
        else:
            claims = self._verify_signature(token)
            self._verified.set(token, (claims, now))
        skew = self._config.clock_skew
        if claims.issued_at > now + skew:
            raise TokenError("issued in the future")
        if now > claims.expires_at + skew:
            raise TokenError("expired", expired=True)
        return claims

    def _verify_signature(self, token: str) -> AccessClaims:
        """The token's claims if its signature, audience and issuer are right (no time
        checks: :meth:`verify` does them on every call)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenError("malformed token") from e
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise TokenError("unknown signing key")
        if header.get("alg") != key.algorithm:
            raise TokenError("algorithm mismatch")
        try:
            claims = jwt.decode(
                token,
                key.verifying,
                algorithms=[key.algorithm],
                audience=self._config.audience,
                issuer=self._config.issuer,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "aud", "sub", "sid", "jti", "iat", "exp"],
                },
            )
        except jwt.InvalidAudienceError as e:
            raise TokenError("wrong audience") from e
        except jwt.InvalidIssuerError as e:
            raise TokenError("wrong issuer") from e
        except jwt.PyJWTError as e:
            raise TokenError("invalid token") from e
        try:
            exp, iat = int(claims["exp"]), int(claims["iat"])
            user_id, session_id = str(claims["sub"]), str(claims["sid"])
            device_id = str(claims.get("device_id") or "")
        except (TypeError, ValueError) as e:
            raise TokenError("invalid claims") from e
        return AccessClaims(user_id, device_id, session_id, str(claims["jti"]), iat, exp,
                            claims.get("guest") is True)
