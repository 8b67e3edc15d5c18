"""Media over federation between two in-process servers: the authenticated federation
download/thumbnail endpoints (multipart/mixed), local clients fetching remote media
through the cache (served again with the remote down), quarantine of remote media,
the size bound of the cache, files larger than the upload limit, a blocked server,
and the legacy fallback when a server lacks the federation endpoint."""

from __future__ import annotations

import io
import json
from typing import Any

import treq
from PIL import Image
from twisted.trial import unittest

from federation.client import AnswerTooLarge, RawAnswer
from federation.media_servlets import (
    RemoteMediaFetcher,
    _Concat,
    multipart_envelope,
    parse_multipart,
)
from homeserver.app import Homeserver
from homeserver.http.errors import MatrixError
from homeserver.media.remote import clean_type
from tests.harness import TEST_PASSWORD, Response
from tests.rest.test_federation_keys import FederationTestCase, federation_section

CLIENT_MEDIA = "/_matrix/client/v1/media"
FED_MEDIA = "/_matrix/federation/v1/media"


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


class MediaTestCase(FederationTestCase):
    async def on(self, hs: Homeserver, method: str, path: str, body: Any = None,
                 token: str | None = None, raw_body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Response:
        if hs is self.hs:
            return await self.request(method, path, body, token=token, raw_body=raw_body,
                                      headers=headers)
        hdrs = {k: [v] for k, v in (headers or {}).items()}
        if token:
            hdrs["Authorization"] = [f"Bearer {token}"]
        data = json.dumps(body).encode() if body is not None else raw_body
        resp = await treq.request(method, f"http://127.0.0.1:{self.port_of(hs)}{path}",
                                  data=data, headers=hdrs, pool=self.pool)
        return Response(resp.code, await resp.content(), resp.headers)

    async def token_on(self, hs: Homeserver, name: str, admin: bool = False) -> str:
        await hs.registration.create_account(name, TEST_PASSWORD, is_admin=admin)
        resp = await self.on(hs, "POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
            "password": TEST_PASSWORD})
        self.assertEqual(resp.code, 200, resp)
        return str(resp.json["access_token"])

    async def upload(self, hs: Homeserver, token: str, data: bytes,
                     ctype: str = "image/png") -> str:
        resp = await self.on(hs, "POST", "/_matrix/media/v3/upload", raw_body=data,
                             token=token, headers={"Content-Type": ctype})
        self.assertEqual(resp.code, 200, resp)
        uri = resp.json["content_uri"]
        return str(uri.rsplit("/", 1)[1])

    async def remote_media(self, data: bytes | None = None, ctype: str = "image/png") -> str:
        """An upload by bob on remote.test."""
        if not hasattr(self, "_bob"):
            self._bob = await self.token_on(self.remote, "bob")
        return await self.upload(self.remote, self._bob,
                                 data if data is not None else png(), ctype)


class FederationDownloadEndpointTest(MediaTestCase):
    async def test_download_and_thumbnail_multipart(self) -> None:
        alice = await self.token_on(self.hs, "alice")
        data = png()
        media_id = await self.upload(self.hs, alice, data)
        resp = await self.remote_signed("GET", f"{FED_MEDIA}/download/{media_id}")
        self.assertEqual(resp.code, 200, resp)
        ctype = resp.header("Content-Type") or ""
        self.assertTrue(ctype.startswith("multipart/mixed; boundary="), ctype)
        (meta_headers, meta), (file_headers, content) = parse_multipart(ctype, resp.raw)
        self.assertEqual(meta_headers["content-type"], "application/json")
        self.assertEqual(json.loads(meta), {})
        self.assertEqual(file_headers["content-type"], "image/png")
        self.assertEqual(file_headers["content-disposition"], "inline")
        self.assertEqual(content, data)
        resp = await self.remote_signed(
            "GET", f"{FED_MEDIA}/thumbnail/{media_id}?width=32&height=32&method=scale")
        self.assertEqual(resp.code, 200, resp)
        parts = parse_multipart(resp.header("Content-Type") or "", resp.raw)
        self.assertEqual(parts[1][0]["content-type"], "image/png")
        self.assertEqual(Image.open(io.BytesIO(parts[1][1])).format, "PNG")

    async def test_errors(self) -> None:
        resp = await self.remote_signed("GET", f"{FED_MEDIA}/download/nothere")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{FED_MEDIA}/download/nothere")
        self.assertMatrixError(resp, 401, "M_UNAUTHORIZED")
        resp = await self.remote_signed("GET", f"{FED_MEDIA}/thumbnail/x?width=1")
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.remote_signed("GET", f"{FED_MEDIA}/thumbnail/x?width=1&height=1"
                                               "&method=melt")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.remote_signed("GET", f"{FED_MEDIA}/download/x?timeout_ms=-5")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")


class RemoteDownloadTest(MediaTestCase):
    async def test_remote_media_fetched_cached_and_served(self) -> None:
        data = png()
        media_id = await self.remote_media(data)
        alice = await self.token_on(self.hs, "alice")
        path = f"{CLIENT_MEDIA}/download/remote.test/{media_id}"
        resp = await self.request("GET", path, token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.raw, data)
        self.assertEqual(resp.header("Content-Type"), "image/png")
        resp = await self.request("GET", path + "/pic.png", token=alice)
        self.assertEqual(resp.header("Content-Disposition"), "inline; filename=pic.png")
        # A thumbnail through the remote server.
        resp = await self.request("GET", f"{CLIENT_MEDIA}/thumbnail/remote.test/{media_id}"
                                         "?width=32&height=32", token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.header("Content-Type"), "image/png")
        # remote.test goes away: the cached copy is still served; an uncached one is 502.
        await self.remote.stop()
        resp = await self.request("GET", path, token=alice)
        self.assertEqual((resp.code, resp.raw), (200, data))
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/other",
                                  token=alice)
        self.assertMatrixError(resp, 502, "M_UNKNOWN")
        # Authentication is needed; the legacy path does not fetch remote media.
        resp = await self.request("GET", path)
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", f"/_matrix/media/v3/download/remote.test/{media_id}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_unknown_remote_media_is_404(self) -> None:
        alice = await self.token_on(self.hs, "alice")
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/nothere",
                                  token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/bad..name/x", token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_quarantined_remote_media(self) -> None:
        data = png(color="blue")
        media_id = await self.remote_media(data)
        alice = await self.token_on(self.hs, "alice")
        admin = await self.token_on(self.hs, "admin", admin=True)
        path = f"{CLIENT_MEDIA}/download/remote.test/{media_id}"
        self.assertEqual((await self.request("GET", path, token=alice)).code, 200)
        resp = await self.request(
            "POST", f"/_synapse/admin/v1/media/quarantine/remote.test/{media_id}", {},
            token=admin)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", path, token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{CLIENT_MEDIA}/thumbnail/remote.test/{media_id}"
                                         "?width=32&height=32", token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # The same bytes under another id (and server) are refused too.
        again = await self.remote_media(data)
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{again}",
                                  token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # Not cached yet: nothing to quarantine.
        resp = await self.request(
            "POST", "/_synapse/admin/v1/media/quarantine/remote.test/notcached", {},
            token=admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")


class CacheBoundTest(MediaTestCase):
    def config_overrides(self) -> dict[str, Any]:
        size = len(png(200, 200, "green"))
        return {"federation": federation_section(),
                "media": {"remote_cache_max_bytes": size + size // 2,
                          "max_upload_size": 3 * size}}

    async def test_least_recently_used_evicted(self) -> None:
        first = png(200, 200, "green")
        second = png(200, 200, "yellow")
        ids = [await self.remote_media(first), await self.remote_media(second)]
        alice = await self.token_on(self.hs, "alice")
        for media_id in ids:
            resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{media_id}",
                                      token=alice)
            self.assertEqual(resp.code, 200, resp)
            self.advance(120)
        # Both do not fit: the first (least recently used) was evicted, the second stays.
        await self.remote.stop()
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{ids[1]}",
                                  token=alice)
        self.assertEqual((resp.code, resp.raw), (200, second))
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{ids[0]}",
                                  token=alice)
        self.assertMatrixError(resp, 502, "M_UNKNOWN")

    async def test_file_over_upload_limit_refused(self) -> None:
        size = len(png(200, 200, "green"))
        # remote.test takes bigger uploads than we do.
        big = bytes(range(256)) * (4 * size // 256 + 1)
        media_id = await self.remote_media(big, "application/octet-stream")
        alice = await self.token_on(self.hs, "alice")
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{media_id}",
                                  token=alice)
        self.assertMatrixError(resp, 502, "M_TOO_LARGE")


class GetUrlTest(MediaTestCase):
    async def test_get_url_bounded(self) -> None:
        assert self.hs.federation is not None
        client = self.hs.federation.client
        url = f"http://127.0.0.1:{self.port_of(self.remote)}/_matrix/client/versions"
        answer = await client.get_url(url, 100_000, 5)
        self.assertEqual(answer.code, 200)
        self.assertIn("versions", json.loads(answer.body))
        with self.assertRaises(AnswerTooLarge):
            await client.get_url(url, 10, 5)


class BlockedMediaTest(MediaTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": federation_section(blocked_servers=["remote.test"])}

    async def test_blocked_both_ways(self) -> None:
        media_id = await self.remote_media()
        alice = await self.token_on(self.hs, "alice")
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{media_id}",
                                  token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        mine = await self.upload(self.hs, alice, png())
        resp = await self.remote_signed("GET", f"{FED_MEDIA}/download/{mine}")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class MultipartTest(unittest.TestCase):
    def test_envelope_round_trip_and_streaming(self) -> None:
        data = bytes(range(256)) * 40 + b"\r\n--b\r\n"  # CRLFs and dashes inside
        prefix, suffix = multipart_envelope("xyz", {"Content-Type": "image/png"})
        reader = _Concat(prefix, io.BytesIO(data), suffix)
        chunks = []
        while chunk := reader.read(7):
            chunks.append(chunk)
        body = b"".join(chunks)
        self.assertEqual(len(body), len(prefix) + len(data) + len(suffix))
        parts = parse_multipart('multipart/mixed; boundary="xyz"', body)
        self.assertEqual(parts, [({"content-type": "application/json"}, b"{}"),
                                 ({"content-type": "image/png"}, data)])
        self.assertEqual(_Concat(prefix, io.BytesIO(data), suffix).read(), body)

    def test_preamble_and_malformed(self) -> None:
        body = b"preamble\r\n--b\r\nA: 1\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--\r\n"
        self.assertEqual(parse_multipart("multipart/mixed; boundary=b", body),
                         [({"a": "1"}, b"x"), ({}, b"y")])
        for ctype, bad in (("multipart/mixed; boundary=b", b"--b\r\nA: 1\r\n\r\nx"),
                           ("multipart/mixed; boundary=b", b"no boundary here"),
                           ("multipart/mixed; boundary=b", b"--b\r\nbroken header\r\n\r\nx"
                                                           b"\r\n--b--"),
                           ("multipart/mixed", b"--b\r\n\r\nx\r\n--b--"),
                           ("image/png", b"--b\r\n\r\nx\r\n--b--")):
            with self.assertRaises(ValueError):
                parse_multipart(ctype, bad)


class CleanTypeTest(unittest.TestCase):
    def test_remote_content_types(self) -> None:
        self.assertEqual(clean_type("Image/PNG; charset=x"), "image/png")
        self.assertEqual(clean_type("text/html"), "text/html")
        for junk in (None, "", "html", "text/<script>", "a/b/c", "x" * 300 + "/y"):
            self.assertEqual(clean_type(junk), "application/octet-stream", junk)


class _FakeClient:
    """Answers a fixed RawAnswer per path prefix, recording the requests."""

    def __init__(self, answers: dict[str, RawAnswer]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any], bool]] = []

    async def request(self, server: str, method: str, path: str, **kw: Any) -> RawAnswer:
        self.calls.append((path, kw["args"], kw["signed"]))
        for prefix, answer in self.answers.items():
            if path.startswith(prefix):
                return answer
        raise AssertionError(path)


    async def get_url(self, url: str, max_size: int, timeout: float) -> RawAnswer:
        self.calls.append((url, {}, False))
        answer = self.answers[url]
        if len(answer.body) > max_size:
            raise AnswerTooLarge("too large")
        return answer


class _NoBlocks:
    async def is_blocked(self, server: str) -> bool:
        return False


class FetcherFallbackTest(unittest.TestCase):
    """The legacy endpoint is used only when the federation one is unknown."""

    def fetcher(self, answers: dict[str, RawAnswer]) -> tuple[RemoteMediaFetcher, _FakeClient]:
        client = _FakeClient(answers)
        return RemoteMediaFetcher(client, _NoBlocks(), 60.0), client  # type: ignore[arg-type]

    async def test_fallback_to_legacy(self) -> None:
        unrecognized = RawAnswer(404, {"content-type": "application/json"},
                                 b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized"}')
        legacy = RawAnswer(200, {"content-type": "image/png"}, b"PNGDATA")
        fetcher, client = self.fetcher({FED_MEDIA: unrecognized, "/_matrix/media/v3": legacy})
        self.assertEqual(await fetcher.download("old.test", "abc", 1000, 5000),
                         ("image/png", b"PNGDATA"))
        self.assertEqual([c[0] for c in client.calls], [
            f"{FED_MEDIA}/download/abc", "/_matrix/media/v3/download/old.test/abc"])
        self.assertEqual(client.calls[1][1]["allow_remote"], "false")
        self.assertEqual([c[2] for c in client.calls], [True, False])

    async def test_location_followed_once(self) -> None:
        located = RawAnswer(200, {"content-type": "multipart/mixed; boundary=b"},
                            b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n"
                            b"Location: https://cdn.test/x\r\n\r\n\r\n--b--\r\n")
        fetcher, client = self.fetcher({
            FED_MEDIA: located,
            "https://cdn.test/x": RawAnswer(200, {"content-type": "image/gif"}, b"GIF89a")})
        self.assertEqual(await fetcher.download("x.test", "abc", 1000, 5000),
                         ("image/gif", b"GIF89a"))
        self.assertEqual(client.calls[-1][0], "https://cdn.test/x")
        for target, code in ((RawAnswer(302, {"location": "https://a.test/"}, b""), 502),
                             (RawAnswer(404, {}, b""), 404),
                             (RawAnswer(200, {}, b"x" * 2000), 502)):
            fetcher, _ = self.fetcher({FED_MEDIA: located, "https://cdn.test/x": target})
            with self.assertRaises(MatrixError) as ctx:
                await fetcher.download("x.test", "abc", 1000, 5000)
            self.assertEqual(ctx.exception.code, code, target)

    async def test_not_found_is_not_retried(self) -> None:
        not_found = RawAnswer(404, {}, b'{"errcode":"M_NOT_FOUND","error":"Not found"}')
        fetcher, client = self.fetcher({FED_MEDIA: not_found})
        with self.assertRaises(MatrixError) as ctx:
            await fetcher.download("new.test", "abc", 1000, 5000)
        self.assertEqual(ctx.exception.code, 404)
        self.assertEqual(len(client.calls), 1)

    async def test_bad_answers(self) -> None:
        for answer, code in [
            (RawAnswer(200, {"content-type": "image/png"}, b"not multipart"), 502),
            (RawAnswer(504, {}, b'{"errcode":"M_NOT_YET_UPLOADED","error":"wait"}'), 504),
            (RawAnswer(500, {}, b"oops"), 502),
        ]:
            fetcher, _ = self.fetcher({FED_MEDIA: answer})
            with self.assertRaises(MatrixError) as ctx:
                await fetcher.download("x.test", "abc", 1000, 5000)
            self.assertEqual(ctx.exception.code, code, answer)
        # Bigger than allowed after parsing.
        body = (b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n"
                b"Content-Type: image/png\r\n\r\n" + b"x" * 2000 + b"\r\n--b--\r\n")
        fetcher, _ = self.fetcher({FED_MEDIA: RawAnswer(
            200, {"content-type": "multipart/mixed; boundary=b"}, body)})
        with self.assertRaises(MatrixError) as ctx:
            await fetcher.download("x.test", "abc", 1000, 5000)
        self.assertEqual((ctx.exception.code, ctx.exception.errcode), (502, "M_TOO_LARGE"))
        fetcher, _ = self.fetcher({FED_MEDIA: RawAnswer(
            200, {"content-type": "multipart/mixed; boundary=b"}, body)})
        self.assertEqual(await fetcher.download("x.test", "abc", 5000, 5000),
                         ("image/png", b"x" * 2000))
