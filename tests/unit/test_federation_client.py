"""The outbound federation client against local servers: TLS verified against a
local CA made here (and refused without it, or for the wrong name), the SSRF guard,
response size and time limits, federation off, and well-known fetching."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl, task
from twisted.trial import unittest
from twisted.web import resource, server

from federation.client import FederationClient, FederationDenied, FederationError
from federation.discovery import ServerTarget
from homeserver.clock import Clock
from homeserver.config.federation import FederationConfig
from homeserver.events.signing import generate_signing_key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_cert(directory: str, dns_name: str) -> tuple[str, bytes]:
    """A CA (its PEM written to ``ca.pem``) and a server certificate for ``dns_name``
    signed by it; returns (CA path, server cert+key PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("Parley test CA"))
          .issuer_name(_name("Parley test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(dns_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(dns_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = os.path.join(directory, "ca.pem")
    with open(ca_path, "wb") as fh:
        fh.write(ca.public_bytes(serialization.Encoding.PEM))
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return ca_path, pem


class Answer(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.body = b'{"ok": true}'
        self.hang = False
        self.redirect: bytes | None = None

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        self.seen.append({"host": request.getHeader("host"), "uri": request.uri,
                          "auth": request.getHeader("authorization")})
        if self.hang:
            return server.NOT_DONE_YET
        if self.redirect and request.path != b"/final":
            request.setResponseCode(302)
            request.setHeader("Location", self.redirect)
            return b""
        request.setHeader("Content-Type", "application/json")
        return self.body


class StaticDiscovery:
    def __init__(self, target: ServerTarget) -> None:
        self.target = target

    async def resolve(self, server_name: str) -> ServerTarget:
        return self.target


class ClientTest(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="parley-fedclient-")
        self.ca_path, pem = make_ca_and_cert(self.dir, "fed.test")
        cert = ssl.PrivateCertificate.loadPEM(pem)
        self.answer = Answer()
        site = server.Site(self.answer)
        self.tls_port = reactor.listenSSL(0, site, cert.options(), interface="127.0.0.1")
        self.plain_port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.tls_port.stopListening)
        self.addCleanup(self.plain_port.stopListening)
        self.clock = Clock(task.Clock())

    def client(self, tls_name: str = "fed.test", plain: bool = False,
               **config: Any) -> FederationClient:
        cfg = FederationConfig(enabled=True, **config)
        if plain:
            cfg = dataclasses.replace(cfg, plain_http_for_tests=True)
        port = (self.plain_port if plain else self.tls_port).getHost().port
        discovery = StaticDiscovery(ServerTarget("fed.test", tls_name, (("127.0.0.1", port),)))
        client = FederationClient(cfg, "us.test", generate_signing_key("k"), reactor,
                                  self.clock, srv_resolver=object(),
                                  discovery=discovery)  # type: ignore[arg-type]
        self.addCleanup(client.close)
        return client

    async def test_tls_with_local_ca(self) -> None:
        client = self.client(tls_ca_file=self.ca_path, ip_range_allowlist=("127.0.0.0/8",))
        answer = await client.get_json("fed.test", "/_matrix/federation/v1/x", {"a": "1 2"})
        self.assertEqual(answer, {"ok": True})
        seen = self.answer.seen[-1]
        self.assertEqual(seen["host"], "fed.test")
        self.assertEqual(seen["uri"], b"/_matrix/federation/v1/x?a=1+2")
        self.assertTrue(seen["auth"].startswith('X-Matrix origin="us.test",'
                                                'destination="fed.test",key="ed25519:k"'))
        # An IP literal server name: the certificate must carry that IP.
        client = self.client(tls_name="127.0.0.1", tls_ca_file=self.ca_path,
                             ip_range_allowlist=("127.0.0.0/8",))
        self.assertEqual(await client.get_json("fed.test", "/y"), {"ok": True})

    async def test_tls_refused_without_ca_or_for_wrong_name(self) -> None:
        client = self.client(ip_range_allowlist=("127.0.0.0/8",))  # system CAs only
        with self.assertRaises(FederationError):
            await client.get_json("fed.test", "/x")
        client = self.client(tls_name="other.test", tls_ca_file=self.ca_path,
                             ip_range_allowlist=("127.0.0.0/8",))
        with self.assertRaises(FederationError):
            await client.get_json("fed.test", "/x")
        self.assertEqual(self.answer.seen, [])

    async def test_ssrf_guard_refuses_loopback_unless_allowed(self) -> None:
        client = self.client(plain=True)
        with self.assertRaises(FederationError):
            await client.get_json("fed.test", "/x")
        self.assertEqual(self.answer.seen, [])
        client = self.client(plain=True, ip_range_allowlist=("10.0.0.0/8",))
        with self.assertRaises(FederationError):
            await client.get_json("fed.test", "/x")
        self.assertEqual(self.answer.seen, [])
        client = self.client(plain=True, ip_range_allowlist=("127.0.0.1/32",))
        self.assertEqual(await client.get_json("fed.test", "/x"), {"ok": True})

    async def test_response_size_and_time_bounded(self) -> None:
        client = self.client(plain=True, ip_range_allowlist=("127.0.0.0/8",),
                             max_response_size=65536)
        self.answer.body = b'{"a": "' + b"x" * 70000 + b'"}'
        with self.assertRaises(FederationError):
            await client.get_json("fed.test", "/x")
        self.answer.body = b"not json"
        with self.assertRaises(FederationError):
            await client.get_json("fed.test", "/x")
        self.answer.hang = True
        with self.assertRaises(FederationError) as cm:
            await client.get_json("fed.test", "/x", timeout=0.3)
        self.assertIn("timed out", str(cm.exception))

    async def test_disabled_or_not_allowed_sends_nothing(self) -> None:
        client = self.client(plain=True, ip_range_allowlist=("127.0.0.0/8",))
        client._config = dataclasses.replace(client._config, enabled=False)  # noqa: SLF001
        with self.assertRaises(FederationDenied):
            await client.get_json("fed.test", "/x")
        client = self.client(plain=True, ip_range_allowlist=("127.0.0.0/8",),
                             allowed_servers=frozenset({"friend.test"}))
        with self.assertRaises(FederationDenied):
            await client.get_json("fed.test", "/x")
        with self.assertRaises(FederationDenied):
            await client.get_json("us.test", "/x")  # ourselves
        self.assertEqual(self.answer.seen, [])

    async def test_http_error_carries_errcode(self) -> None:
        from federation.client import FederationHttpError

        client = self.client(plain=True, ip_range_allowlist=("127.0.0.0/8",))

        class NotFound(resource.Resource):
            isLeaf = True

            def render(self, request: server.Request) -> bytes:  # type: ignore[override]
                request.setResponseCode(404)
                return b'{"errcode": "M_NOT_FOUND", "error": "no"}'

        port = reactor.listenTCP(0, server.Site(NotFound()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client.discovery = StaticDiscovery(  # type: ignore[assignment]
            ServerTarget("fed.test", "fed.test", (("127.0.0.1", port.getHost().port),)))
        with self.assertRaises(FederationHttpError) as cm:
            await client.get_json("fed.test", "/x")
        self.assertEqual((cm.exception.code, cm.exception.errcode), (404, "M_NOT_FOUND"))

    async def test_well_known_fetch_redirects_and_size(self) -> None:
        client = self.client(plain=True, ip_range_allowlist=("127.0.0.0/8",))
        base = f"http://127.0.0.1:{self.plain_port.getHost().port}"
        self.answer.redirect = b"/final"
        self.answer.body = b'{"m.server": "x.test:1"}'
        status, _cc, body = await client.fetch_well_known(base + "/.well-known/matrix/server")
        self.assertEqual((status, body), (200, b'{"m.server": "x.test:1"}'))
        self.assertEqual(self.answer.seen[-1]["uri"], b"/final")
        self.answer.body = b" " * (60 * 1024)
        with self.assertRaises(FederationError):
            await client.fetch_well_known(base + "/.well-known/matrix/server")
        # The guard applies to well-known fetches too.
        guarded = self.client(plain=True)
        with self.assertRaises(Exception):  # noqa: B017 (refused before connecting)
            await guarded.fetch_well_known(base + "/.well-known/matrix/server")
