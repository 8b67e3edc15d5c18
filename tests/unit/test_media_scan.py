"""Unit tests for media scanning and its helpers: magic-byte checks, the SHA-256 deny
list, the URL-preview address check, the ClamAV INSTREAM framing (against a fake
clamd), thumbnail sizing, Content-Disposition and the media config section."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import tempfile
import threading
from typing import Any

from twisted.trial import unittest

from homeserver.config import parse_config
from homeserver.config.loader import ConfigError
from homeserver.media.preview import is_address_blocked, parse_og
from homeserver.media.thumbnailer import target_size
from homeserver.rest.media import content_disposition
from plugins import load_plugins
from plugins.host import PluginHost
from plugins.media_scan import BuiltinMediaScanner, load_deny_list, magic_mismatch
from tests.harness import make_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "clamav_plugin"))
import parley_clamav  # noqa: E402

PNG_HEAD = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"


class MagicBytesTest(unittest.TestCase):
    def test_matching_and_mismatching(self) -> None:
        self.assertIsNone(magic_mismatch(PNG_HEAD, "image/png"))
        self.assertIsNone(magic_mismatch(b"\xff\xd8\xff\xe0", "image/jpeg"))
        self.assertIsNone(magic_mismatch(b"\xff\xd8\xff\xe0", "image/JPG; x=y"))
        self.assertIsNone(magic_mismatch(b"GIF89a", "image/gif"))
        self.assertIsNone(magic_mismatch(b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"))
        self.assertIsNone(magic_mismatch(b"%PDF-1.7", "application/pdf"))
        self.assertIn("image/png", magic_mismatch(PNG_HEAD, "image/jpeg") or "")
        self.assertIsNotNone(magic_mismatch(b"<svg>", "image/png"))
        self.assertIsNotNone(magic_mismatch(b"RIFF\0\0\0\0WAVE", "image/webp"))
        self.assertIsNotNone(magic_mismatch(b"<html>", "application/pdf"))

    def test_octet_stream_and_unchecked_types_pass(self) -> None:
        self.assertIsNone(magic_mismatch(os.urandom(16), "application/octet-stream"))
        self.assertIsNone(magic_mismatch(PNG_HEAD, "application/octet-stream"))
        self.assertIsNone(magic_mismatch(b"hello", "text/plain"))

    def test_deny_list(self) -> None:
        bad = hashlib.sha256(b"bad").hexdigest()
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(f"# comment\n\n{bad.upper()}  # trailing comment\n")
        self.addCleanup(os.unlink, f.name)
        self.assertEqual(load_deny_list(f.name), frozenset({bad}))
        scanner = BuiltinMediaScanner(f.name)
        with tempfile.NamedTemporaryFile(delete=False) as data:
            data.write(b"bad")
        self.addCleanup(os.unlink, data.name)
        self.assertEqual(scanner.scan_media(data.name, "application/octet-stream", bad),
                         "sha256 on the deny list")
        self.assertIsNone(scanner.scan_media(data.name, "application/octet-stream", "0" * 64))
        self.assertIsNotNone(scanner.scan_media(data.name, "image/png", "0" * 64))

    def test_deny_list_rejects_garbage(self) -> None:
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("not-a-hash\n")
        self.addCleanup(os.unlink, f.name)
        self.assertRaises(ValueError, load_deny_list, f.name)

    def test_hook_through_the_plugin_host(self) -> None:
        """The built-in scanner is a plugin like any other: the host's scan answers None
        for a clean file and the first reason otherwise."""
        pm = load_plugins([])
        pm.register(BuiltinMediaScanner(), name="builtin")
        host = PluginHost(pm)
        with tempfile.NamedTemporaryFile(delete=False) as data:
            data.write(PNG_HEAD)
        self.addCleanup(os.unlink, data.name)
        self.assertIsNone(host.scan_media_blocking(data.name, "image/png", "0" * 64))
        self.assertIsInstance(host.scan_media_blocking(data.name, "image/gif", "0" * 64), str)


class AddressCheckTest(unittest.TestCase):
    def test_blocked_ranges(self) -> None:
        for ip in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                   "0.0.0.0", "100.64.0.1", "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
                   "fc00::1", "fd12::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::", "not-an-ip",
                   "198.18.0.1"):
            self.assertTrue(is_address_blocked(ip, []), ip)

    def test_public_and_allow_listed(self) -> None:
        for ip in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"):
            self.assertFalse(is_address_blocked(ip, []), ip)
        self.assertFalse(is_address_blocked("127.0.0.1", ["127.0.0.0/8"]))
        self.assertFalse(is_address_blocked("10.0.0.5", ["10.0.0.0/24"]))
        self.assertTrue(is_address_blocked("10.0.1.5", ["10.0.0.0/24"]))

    def test_og_parsing(self) -> None:
        og = parse_og(b"<title> T </title><meta property='og:image' content='https://x/y.png'>")
        self.assertEqual(og, {"og:image": "https://x/y.png", "og:title": "T"})


class _FakeClamd:
    """Accepts one connection, records the INSTREAM framing, answers ``reply``."""

    def __init__(self, reply: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.command = b""
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self, conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            data = conn.recv(n - len(buf))
            if not data:
                raise EOFError
            buf += data
        return buf

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self.command = self._read(conn, len(b"zINSTREAM\0"))
            while True:
                (length,) = struct.unpack("!L", self._read(conn, 4))
                if length == 0:
                    break
                self.chunks.append(self._read(conn, length))
            conn.sendall(self.reply)
        self.sock.close()


class ClamAvFramingTest(unittest.TestCase):
    def _file(self, data: bytes) -> str:
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_clean(self) -> None:
        data = os.urandom(parley_clamav.CHUNK * 2 + 10)
        clamd = _FakeClamd(b"stream: OK\0")
        self.assertIsNone(parley_clamav.scan_file(self._file(data), clamd.address, timeout=5))
        clamd.thread.join(5)
        self.assertEqual(clamd.command, b"zINSTREAM\0")
        self.assertEqual([len(c) for c in clamd.chunks],
                         [parley_clamav.CHUNK, parley_clamav.CHUNK, 10])
        self.assertEqual(b"".join(clamd.chunks), data)

    def test_found_and_error(self) -> None:
        clamd = _FakeClamd(b"stream: Eicar-Test-Signature FOUND\0")
        self.assertEqual(parley_clamav.scan_file(self._file(b"X5O!"), clamd.address, timeout=5),
                         "malware: Eicar-Test-Signature")
        clamd = _FakeClamd(b"INSTREAM size limit exceeded. ERROR\0")
        self.assertIn("scanner error", parley_clamav.scan_file(self._file(b"x"), clamd.address,
                                                               timeout=5) or "")

    def test_unreachable_fails_closed(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ["PARLEY_CLAMAV_SOCKET"] = f"127.0.0.1:{port}"
        self.addCleanup(os.environ.pop, "PARLEY_CLAMAV_SOCKET")
        self.assertEqual(parley_clamav.scan_media(self._file(b"x"), "text/plain", "0" * 64),
                         "scanner unavailable")


class HelpersTest(unittest.TestCase):
    def test_target_size(self) -> None:
        self.assertEqual(target_size(640, 480, 96, 96, "scale"), (96, 72))
        self.assertEqual(target_size(640, 480, 96, 96, "crop"), (96, 96))
        self.assertEqual(target_size(640, 480, 1000, 1000, "scale"), (640, 480))
        self.assertEqual(target_size(100, 50, 200, 200, "crop"), (50, 50))

    def test_content_disposition(self) -> None:
        self.assertEqual(content_disposition("image/png", None), "inline")
        self.assertEqual(content_disposition("text/html", "a.html"), "attachment; filename=a.html")
        self.assertEqual(content_disposition("image/svg+xml", None), "attachment")
        self.assertEqual(content_disposition("application/octet-stream", "ä b\"c"),
                         "attachment; filename*=utf-8''%C3%A4%20b%22c")


class MediaConfigTest(unittest.TestCase):
    def _raw(self, media: dict[str, Any]) -> dict[str, Any]:
        config, _ = make_config(tempfile.mkdtemp(), "sqlite")
        return {"server_name": "x.test", "media": media,
                "auth": {"signing_keys": [{"kid": "k", "algorithm": "HS256", "key": "s" * 32}]},
                "data_dir": config.data_dir}

    def test_defaults(self) -> None:
        cfg = parse_config(self._raw({}))
        self.assertEqual(cfg.media.max_upload_size, 50 * 1024 * 1024)
        self.assertEqual(cfg.media.store, "local")
        self.assertTrue(cfg.media.media_dir.endswith("media"))
        self.assertFalse(cfg.media.url_preview.enabled)
        self.assertTrue(cfg.media.legacy_unauthenticated_download)

    def test_errors(self) -> None:
        for media in ({"bogus": 1}, {"store": "s3"}, {"s3": {"bucket": "b", "nope": 1}},
                      {"allowed_content_types": ["text/html; charset=x"]},
                      {"url_preview": {"ip_range_allowlist": ["nonsense"]}},
                      {"max_upload_size": 0}):
            self.assertRaises(ConfigError, parse_config, self._raw(media))

    def test_s3_env_secret(self) -> None:
        os.environ["PARLEY_UNIT_S3_SECRET"] = "sekrit"
        self.addCleanup(os.environ.pop, "PARLEY_UNIT_S3_SECRET")
        cfg = parse_config(self._raw({"store": "s3", "s3": {
            "bucket": "b", "secret_access_key": {"env": "PARLEY_UNIT_S3_SECRET"},
            "presigned_redirect": True, "presigned_url_lifetime": "2m"}}))
        assert cfg.media.s3 is not None
        self.assertEqual(cfg.media.s3.secret_access_key, "sekrit")
        self.assertNotIn("sekrit", repr(cfg.media))
        self.assertEqual(cfg.media.s3.presigned_url_lifetime, 120)
