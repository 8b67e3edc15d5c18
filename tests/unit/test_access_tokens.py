"""The JWT codec: claims, expiry with skew, key rotation by kid, algorithm pinning."""

from __future__ import annotations

import jwt
from twisted.internet import task
from twisted.trial import unittest

from homeserver.auth.access_tokens import AccessTokenCodec, TokenError, generate_signing_key_pem
from homeserver.clock import Clock
from homeserver.config.model import AuthConfig, SigningKeyConfig

KEY_A = generate_signing_key_pem("EdDSA")
KEY_B = generate_signing_key_pem("ES256")


def auth_config(keys: list[SigningKeyConfig], active: str, **kw: object) -> AuthConfig:
    base = dict(issuer="https://hs", audience="hs", access_token_lifetime=900,
                access_token_lifetime_without_refresh=86400, refresh_token_lifetime=86400,
                clock_skew=60, session_cache_ttl=30, signing_keys=keys, active_kid=active)
    base.update(kw)
    return AuthConfig(**base)  # type: ignore[arg-type]


class CodecTest(unittest.TestCase):
    def setUp(self) -> None:
        self.time = task.Clock()
        self.time.advance(1_800_000_000)
        self.clock = Clock(self.time)

    def test_roundtrip(self) -> None:
        codec = AccessTokenCodec(auth_config([SigningKeyConfig("a", "EdDSA", KEY_A)], "a"),
                                 self.clock)
        token, exp = codec.issue("@u:hs", "DEV", "sid1", 900)
        self.assertEqual(exp, 1_800_000_900)
        claims = codec.verify(token)
        self.assertEqual((claims.user_id, claims.device_id, claims.session_id),
                         ("@u:hs", "DEV", "sid1"))
        self.assertFalse(claims.is_guest)

    def test_expiry_skew(self) -> None:
        codec = AccessTokenCodec(auth_config([SigningKeyConfig("a", "EdDSA", KEY_A)], "a"),
                                 self.clock)
        token, _ = codec.issue("@u:hs", "DEV", "sid1", 900)
        self.time.advance(960)
        codec.verify(token)
        self.time.advance(1)
        with self.assertRaises(TokenError) as cm:
            codec.verify(token)
        self.assertTrue(cm.exception.expired)

    def test_rotation_keeps_old_tokens_valid(self) -> None:
        old = AccessTokenCodec(auth_config([SigningKeyConfig("a", "EdDSA", KEY_A)], "a"),
                               self.clock)
        token_a, _ = old.issue("@u:hs", "DEV", "sid1", 900)
        rotated = AccessTokenCodec(auth_config(
            [SigningKeyConfig("a", "EdDSA", KEY_A, verify_only=True),
             SigningKeyConfig("b", "ES256", KEY_B)], "b"), self.clock)
        self.assertEqual(rotated.verify(token_a).session_id, "sid1")
        token_b, _ = rotated.issue("@u:hs", "DEV", "sid2", 900)
        self.assertEqual(jwt.get_unverified_header(token_b)["kid"], "b")
        self.assertEqual(jwt.get_unverified_header(token_b)["alg"], "ES256")
        with self.assertRaises(TokenError):
            old.verify(token_b)  # unknown kid to the old config

    def test_algorithm_pinned_to_key(self) -> None:
        codec = AccessTokenCodec(auth_config([SigningKeyConfig("a", "EdDSA", KEY_A)], "a"),
                                 self.clock)
        token, _ = codec.issue("@u:hs", "DEV", "sid1", 900)
        claims = jwt.decode(token, options={"verify_signature": False})
        hs = jwt.encode(claims, "k" * 40, algorithm="HS256", headers={"kid": "a"})
        with self.assertRaises(TokenError):
            codec.verify(hs)

    def test_hs256_only_when_configured_and_long_enough(self) -> None:
        with self.assertRaises(ValueError):
            AccessTokenCodec(auth_config([SigningKeyConfig("h", "HS256", "short")], "h"),
                             self.clock)
        codec = AccessTokenCodec(auth_config([SigningKeyConfig("h", "HS256", "s" * 32)], "h"),
                                 self.clock)
        token, _ = codec.issue("@u:hs", "DEV", "sid", 60)
        self.assertEqual(codec.verify(token).user_id, "@u:hs")

    def test_key_type_must_match_algorithm(self) -> None:
        with self.assertRaises(ValueError):
            AccessTokenCodec(auth_config([SigningKeyConfig("a", "ES256", KEY_A)], "a"), self.clock)

    def test_missing_claims_rejected(self) -> None:
        codec = AccessTokenCodec(auth_config([SigningKeyConfig("a", "EdDSA", KEY_A)], "a"),
                                 self.clock)
        token = jwt.encode({"iss": "https://hs", "aud": "hs", "sub": "@u:hs", "iat": 1_800_000_000,
                            "exp": 1_800_000_900}, KEY_A, algorithm="EdDSA", headers={"kid": "a"})
        with self.assertRaises(TokenError):
            codec.verify(token)


class VerifiedCacheTest(unittest.TestCase):
    """The signature check is remembered per token; expiry is still checked every time
    and rejections are never remembered."""

    def setUp(self) -> None:
        self.time = task.Clock()
        self.time.advance(1_800_000_000)
        self.codec = AccessTokenCodec(auth_config([SigningKeyConfig("a", "EdDSA", KEY_A)], "a"),
                                      Clock(self.time))
        self.decodes = 0
        real = jwt.decode

        def counting(*a: object, **kw: object) -> object:
            self.decodes += 1
            return real(*a, **kw)  # type: ignore[arg-type]

        self.patch(jwt, "decode", counting)

    def test_signature_checked_once_within_ttl(self) -> None:
        token, _ = self.codec.issue("@u:hs", "DEV", "sid1", 900)
        for _ in range(3):
            self.assertEqual(self.codec.verify(token).session_id, "sid1")
        self.assertEqual(self.decodes, 1)
        self.time.advance(61)  # past the cache's TTL: checked again
        self.codec.verify(token)
        self.assertEqual(self.decodes, 2)

    def test_cached_token_still_expires(self) -> None:
        codec = AccessTokenCodec(auth_config([SigningKeyConfig("a", "EdDSA", KEY_A)], "a",
                                             clock_skew=0), Clock(self.time))
        token, _ = codec.issue("@u:hs", "DEV", "sid1", 10)
        codec.verify(token)
        self.time.advance(10)
        codec.verify(token)  # the last valid second, from the cache
        self.time.advance(1)  # expired while the cache entry is still fresh
        with self.assertRaises(TokenError) as cm:
            codec.verify(token)
        self.assertTrue(cm.exception.expired)
        self.assertEqual(self.decodes, 1)

    def test_forged_token_never_cached(self) -> None:
        token, _ = self.codec.issue("@u:hs", "DEV", "sid1", 900)
        head, body, sig = token.split(".")
        forged = f"{head}.{body}.{sig[:-4]}AAAA"
        for _ in range(2):
            with self.assertRaises(TokenError):
                self.codec.verify(forged)
        self.assertEqual(self.decodes, 2)
