"""The optional TLS listener: TLS 1.2 minimum, HSTS on every response."""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, threads
from twisted.trial import unittest

from homeserver.app import build_homeserver
from tests.harness import drop_pg_schema, make_config, require_postgres, test_engine


def self_signed(directory: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "c.pem"), os.path.join(directory, "k.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def fetch(port: int, cafile: str, max_version: ssl.TLSVersion | None = None) -> tuple[int, dict]:
    """A blocking HTTPS GET (run in a thread) returning (status, headers)."""
    import http.client

    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    if max_version is not None:
        ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/_matrix/client/versions")
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


class TlsListenerTest(unittest.TestCase):
    timeout = 60
    min_version = "1.2"

    async def setUp(self) -> None:  # type: ignore[override]
        engine = test_engine()
        if engine == "postgres":
            require_postgres()
        d = tempfile.mkdtemp()
        self.cert, key = self_signed(d)
        config, schema = make_config(d, engine, listeners=[{
            "port": 0, "bind_addresses": ["127.0.0.1"],
            "tls": {"certificate_path": self.cert, "private_key_path": key,
                    "min_version": self.min_version}}])
        if schema:
            self.addCleanup(drop_pg_schema, schema)
        self.hs = await build_homeserver(config)
        self.port = self.hs.listen(reactor)[0].getHost().port

    async def tearDown(self) -> None:  # type: ignore[override]
        await self.hs.stop()

    async def test_hsts_over_tls(self) -> None:
        status, headers = await threads.deferToThread(fetch, self.port, self.cert)
        self.assertEqual(status, 200)
        self.assertIn("max-age=", headers["strict-transport-security"])
        self.assertEqual(headers["x-content-type-options"], "nosniff")

    async def test_tls_1_2_accepted_1_1_refused(self) -> None:
        status, _ = await threads.deferToThread(fetch, self.port, self.cert, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(status, 200)
        d = threads.deferToThread(fetch, self.port, self.cert, ssl.TLSVersion.TLSv1_1)
        with self.assertRaises((ssl.SSLError, OSError)):
            await d


class Tls13OnlyListenerTest(TlsListenerTest):
    """With ``min_version: "1.3"`` a client limited to TLS 1.2 is refused by the server
    (the client surely speaks 1.2, so the refusal is the server's)."""

    min_version = "1.3"

    async def test_tls_1_2_accepted_1_1_refused(self) -> None:
        d = threads.deferToThread(fetch, self.port, self.cert, ssl.TLSVersion.TLSv1_2)
        with self.assertRaises((ssl.SSLError, OSError)):
            await d
        status, _ = await threads.deferToThread(fetch, self.port, self.cert)
        self.assertEqual(status, 200)
