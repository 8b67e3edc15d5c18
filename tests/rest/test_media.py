"""Media repository over HTTP on the local filesystem store (the S3 store runs the same
tests in ``test_media_s3``): upload, async upload, download headers, thumbnails,
limits, scanning, quarantine and preview_url."""

from __future__ import annotations

import hashlib
import io
import os
import time
from typing import Any

import treq
from PIL import Image
from twisted.internet import defer, reactor
from twisted.web import resource, server
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.harness import TEST_PASSWORD, HomeserverTestCase

UPLOAD = "/_matrix/media/v3/upload"
CREATE = "/_matrix/media/v1/create"
AUTHED = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/v3"


def make_image(fmt: str = "PNG", size: tuple[int, int] = (640, 480), mode: str = "RGB") -> bytes:
    img = Image.new(mode, size, "red" if mode != "1" else 1)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


PNG = make_image("PNG")
JPEG = make_image("JPEG")


def mxc_parts(uri: str) -> tuple[str, str]:
    assert uri.startswith("mxc://"), uri
    server, media_id = uri[len("mxc://"):].split("/")
    return server, media_id


@implementer(IBodyProducer)
class _ChunkedProducer:
    """A body of unknown length (sent chunked), to test the limit without Content-Length."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self._data = data

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:  # noqa: N802
        for i in range(0, len(self._data), 65536):
            consumer.write(self._data[i:i + 65536])
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class MediaTestMixin:
    """The tests; subclasses choose the store through :meth:`store_config`."""

    max_upload = 512 * 1024

    def store_config(self) -> dict[str, Any]:
        return {}

    def media_config(self) -> dict[str, Any]:
        return {}

    def config_overrides(self) -> dict[str, Any]:
        return {
            "media": {"max_upload_size": self.max_upload, **self.store_config(),
                      **self.media_config()},
            "http": {"max_request_body_size": 64 * 1024},
        }

    async def _user(self, name: str = "alice") -> str:
        return (await self.register(name))["access_token"]

    async def upload(self, token: str | None, data: bytes, ctype: str | None = "image/png",
                     query: str = "") -> Any:
        headers = {"Content-Type": ctype} if ctype else {}
        return await self.request("POST", UPLOAD + query, raw_body=data, headers=headers, token=token)

    async def upload_ok(self, token: str, data: bytes = PNG, ctype: str = "image/png") -> str:
        resp = await self.upload(token, data, ctype)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["content_uri"]

    # -- upload and download --------------------------------------------------------

    async def test_upload_and_download_authenticated(self) -> None:
        token = await self._user()
        uri = await self.upload_ok(token)
        server_name, media_id = mxc_parts(uri)
        self.assertEqual(server_name, "test.local")
        resp = await self.request("GET", f"{AUTHED}/download/{server_name}/{media_id}", token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.raw, PNG)
        self.assertEqual(resp.header("Content-Type"), "image/png")
        self.assertEqual(resp.header("Content-Disposition"), "inline")
        self.assertTrue(resp.header("Content-Security-Policy").startswith("sandbox"))
        self.assertEqual(resp.header("X-Content-Type-Options"), "nosniff")
        # The file name comes from the URL only (it is not stored).
        named = await self.request("GET", f"{AUTHED}/download/{server_name}/{media_id}/cat pic.png",
                                   token=token)
        self.assertEqual(named.header("Content-Disposition"),
                         "inline; filename*=utf-8''cat%20pic.png")
        plain = await self.request("GET", f"{AUTHED}/download/{server_name}/{media_id}/cat.png",
                                   token=token)
        self.assertEqual(plain.header("Content-Disposition"), "inline; filename=cat.png")

    async def test_metadata_stored(self) -> None:
        token = await self._user()
        uri = await self.upload_ok(token, PNG)
        info = await self.hs_media_store().get(mxc_parts(uri)[1])
        self.assertEqual(info.owner, "@alice:test.local")
        self.assertEqual(info.size, len(PNG))
        self.assertEqual(info.sha256, hashlib.sha256(PNG).hexdigest())
        self.assertEqual(info.content_type, "image/png")
        self.assertFalse(info.quarantined)

    def hs_media_store(self) -> Any:
        from storage.stores.media import MediaStore

        return MediaStore(self.hs.db)

    async def test_active_types_are_attachments(self) -> None:
        token = await self._user()
        for ctype, expect_type in (("text/html", "text/html"), ("image/svg+xml", "image/svg+xml"),
                                   ("text/plain", "text/plain; charset=UTF-8")):
            uri = await self.upload_ok(token, b"<script>alert(1)</script>", ctype)
            _, media_id = mxc_parts(uri)
            resp = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=token)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.header("Content-Disposition"), "attachment")
            self.assertEqual(resp.header("Content-Type"), expect_type)
            self.assertIn("sandbox", resp.header("Content-Security-Policy"))

    async def test_encrypted_attachment_octet_stream(self) -> None:
        token = await self._user()
        blob = os.urandom(200 * 1024)  # ciphertext: no magic bytes, above the JSON limit
        uri = await self.upload_ok(token, blob, "application/octet-stream")
        _, media_id = mxc_parts(uri)
        resp = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=token)
        self.assertEqual(resp.raw, blob)
        self.assertEqual(resp.header("Content-Disposition"), "attachment")
        thumb = await self.request("GET", f"{AUTHED}/thumbnail/test.local/{media_id}?width=32&height=32",
                                   token=token)
        self.assertMatrixError(thumb, 400, "M_UNKNOWN")

    async def test_missing_token(self) -> None:
        token = await self._user()
        _, media_id = mxc_parts(await self.upload_ok(token))
        for method, path in (
            ("POST", UPLOAD), ("POST", CREATE), ("PUT", f"{LEGACY}/upload/test.local/abc"),
            ("GET", f"{AUTHED}/download/test.local/{media_id}"),
            ("GET", f"{AUTHED}/download/test.local/{media_id}/x.png"),
            ("GET", f"{AUTHED}/thumbnail/test.local/{media_id}?width=10&height=10"),
            ("GET", f"{AUTHED}/config"), ("GET", f"{LEGACY}/config"),
            ("GET", f"{AUTHED}/preview_url?url=https://example.org"),
            ("POST", f"/_synapse/admin/v1/media/quarantine/test.local/{media_id}"),
        ):
            resp = await self.request(method, path, raw_body=b"x" if method != "GET" else None)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_config(self) -> None:
        token = await self._user()
        for path in (f"{AUTHED}/config", f"{LEGACY}/config"):
            resp = await self.request("GET", path, token=token)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json, {"m.upload.size": self.max_upload})

    async def test_legacy_download_and_head(self) -> None:
        token = await self._user()
        _, media_id = mxc_parts(await self.upload_ok(token))
        resp = await self.request("GET", f"{LEGACY}/download/test.local/{media_id}")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.raw, PNG)
        head = await self.request("HEAD", f"{AUTHED}/download/test.local/{media_id}", token=token)
        self.assertEqual(head.code, 200)
        self.assertEqual(head.raw, b"")
        self.assertEqual(head.header("Content-Length"), str(len(PNG)))

    async def test_unknown_media(self) -> None:
        token = await self._user()
        for path in (f"{AUTHED}/download/test.local/nosuchmedia",
                     f"{AUTHED}/download/other.server/nosuchmedia",
                     f"{AUTHED}/download/test.local/..%2F..%2Fetc",
                     f"{AUTHED}/thumbnail/test.local/nosuchmedia?width=10&height=10",
                     f"{LEGACY}/download/test.local/nosuchmedia"):
            resp = await self.request("GET", path, token=token)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    # -- limits and checks ----------------------------------------------------------

    async def test_oversized_upload(self) -> None:
        token = await self._user()
        resp = await self.upload(token, b"\0" * (self.max_upload + 1), "application/octet-stream")
        self.assertMatrixError(resp, 413, "M_TOO_LARGE")
        # Without Content-Length (chunked) the limit holds as the bytes arrive.
        chunked = await treq.request(
            "POST", self.base_url + UPLOAD, data=_ChunkedProducer(b"\0" * (self.max_upload + 70000)),
            headers={"Authorization": [f"Bearer {token}"],
                     "Content-Type": ["application/octet-stream"]}, pool=self.pool)
        self.assertEqual(chunked.code, 413)
        self.assertEqual((await chunked.json())["errcode"], "M_TOO_LARGE")
        # Just under the limit is fine, though far above the JSON body limit.
        ok = await self.upload(token, b"\0" * self.max_upload, "application/octet-stream")
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual(await self.hs_media_store().used_bytes("@alice:test.local"), self.max_upload)

    async def test_json_routes_keep_json_limit(self) -> None:
        token = await self._user()
        big = {"x": "a" * (100 * 1024)}
        resp = await self.request("PUT", "/_matrix/client/v3/user/@alice:test.local/account_data/m.x",
                                  body=big, token=token)
        self.assertMatrixError(resp, 413, "M_TOO_LARGE")

    async def test_type_vs_magic_bytes(self) -> None:
        token = await self._user()
        for data, ctype in ((JPEG, "image/png"), (PNG, "image/jpeg"), (b"hello", "image/gif"),
                            (b"<html>", "application/pdf"), (b"RIFF0000WAVE", "image/webp")):
            resp = await self.upload(token, data, ctype)
            self.assertMatrixError(resp, 400, "M_UNKNOWN")
        for data, ctype in ((JPEG, "image/jpeg"), (JPEG, "image/jpg"), (make_image("GIF"), "image/gif"),
                            (make_image("WEBP"), "image/webp"), (b"%PDF-1.7\n", "application/pdf"),
                            (PNG, "application/octet-stream")):
            resp = await self.upload(token, data, ctype)
            self.assertEqual(resp.code, 200, (ctype, resp))

    async def test_missing_content_type_is_octet_stream(self) -> None:
        token = await self._user()
        _, media_id = mxc_parts((await self.upload(token, b"abc", None)).json["content_uri"])
        resp = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=token)
        self.assertEqual(resp.header("Content-Type"), "application/octet-stream")

    async def test_quarantine(self) -> None:
        token = await self._user()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        admin = (await self.login("admin")).json["access_token"]
        _, media_id = mxc_parts(await self.upload_ok(token))
        path = f"/_synapse/admin/v1/media/quarantine/test.local/{media_id}"
        denied = await self.request("POST", path, body={}, token=token)
        self.assertMatrixError(denied, 403, "M_FORBIDDEN")
        ok = await self.request("POST", path, body={}, token=admin)
        self.assertEqual(ok.code, 200, ok)
        for p in (f"{AUTHED}/download/test.local/{media_id}",
                  f"{AUTHED}/thumbnail/test.local/{media_id}?width=10&height=10",
                  f"{LEGACY}/download/test.local/{media_id}"):
            self.assertMatrixError(await self.request("GET", p, token=token), 404, "M_NOT_FOUND")
        unknown = await self.request("POST", "/_synapse/admin/v1/media/quarantine/test.local/nope",
                                     body={}, token=admin)
        self.assertMatrixError(unknown, 404, "M_NOT_FOUND")

    async def _admin(self) -> str:
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        return (await self.login("admin")).json["access_token"]

    async def test_quarantine_by_hash(self) -> None:
        """Finding 11: quarantining A quarantines its bytes. A copy uploaded before or after
        (B) is not served, nor its thumbnails; A's cached thumbnails are deleted."""
        token = await self._user()
        bob = await self._user("bob")
        admin = await self._admin()
        _, media_a = mxc_parts(await self.upload_ok(token))
        _, earlier = mxc_parts(await self.upload_ok(bob))
        self.assertEqual((await self.thumb(token, media_a, "width=32&height=32&method=crop")).code,
                         200)
        self.assertEqual(len(self.thumbnail_files(media_a)), 1)
        ok = await self.request("POST", f"/_synapse/admin/v1/media/quarantine/test.local/{media_a}",
                                body={}, token=admin)
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual(await self.hs_media_store().list_thumbnails(media_a), [])
        self.assertEqual(self.thumbnail_files(media_a), [])
        # The same bytes again, under a new id, by someone else: stored, never served.
        up = await self.upload(bob, PNG)
        self.assertEqual(up.code, 200, up)
        _, media_b = mxc_parts(up.json["content_uri"])
        self.assertTrue((await self.hs_media_store().get(media_b)).quarantined)
        # Through /create + PUT as well.
        created = await self.request("POST", CREATE, token=bob)
        _, reserved = mxc_parts(created.json["content_uri"])
        put = await self.request("PUT", f"{LEGACY}/upload/test.local/{reserved}", raw_body=PNG,
                                 headers={"Content-Type": "image/png"}, token=bob)
        self.assertEqual(put.code, 200, put)
        for media_id in (media_a, earlier, media_b, reserved):
            for p in (f"{AUTHED}/download/test.local/{media_id}",
                      f"{AUTHED}/thumbnail/test.local/{media_id}?width=10&height=10",
                      f"{AUTHED}/thumbnail/test.local/{media_id}?width=96&height=96&method=crop",
                      f"{LEGACY}/download/test.local/{media_id}",
                      f"{LEGACY}/thumbnail/test.local/{media_id}?width=10&height=10"):
                self.assertMatrixError(await self.request("GET", p, token=bob), 404, "M_NOT_FOUND")
        # Other bytes are unaffected.
        _, other = mxc_parts(await self.upload_ok(bob, JPEG, "image/jpeg"))
        self.assertEqual((await self.request("GET", f"{AUTHED}/download/test.local/{other}",
                                             token=bob)).code, 200)
        # Lifting the quarantine of A lifts it for its bytes.
        lift = await self.request("POST", f"/_synapse/admin/v1/media/unquarantine/test.local/{media_a}",
                                  body={}, token=admin)
        self.assertEqual(lift.code, 200, lift)
        for media_id in (media_a, media_b, earlier):
            resp = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=bob)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.raw, PNG)
        denied = await self.request("POST", f"/_synapse/admin/v1/media/unquarantine/test.local/{media_a}",
                                    body={}, token=bob)
        self.assertMatrixError(denied, 403, "M_FORBIDDEN")

    async def test_admin_delete_media(self) -> None:
        token = await self._user()
        admin = await self._admin()
        _, media_id = mxc_parts(await self.upload_ok(token))
        self.assertEqual((await self.thumb(token, media_id, "width=32&height=32&method=crop")).code,
                         200)
        path = f"/_synapse/admin/v1/media/test.local/{media_id}"
        self.assertMatrixError(await self.request("DELETE", path, token=token), 403, "M_FORBIDDEN")
        resp = await self.request("DELETE", path, token=admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"deleted_media": [media_id], "total": 1})
        self.assertIsNone(await self.hs_media_store().get(media_id))
        self.assertEqual(await self.hs_media_store().list_thumbnails(media_id), [])
        self.assertEqual(self.thumbnail_files(media_id), [])
        self.assertEqual(await self.hs_media_store().used_bytes("@alice:test.local"), 0)
        self.assertMatrixError(await self.request("GET", f"{AUTHED}/download/test.local/{media_id}",
                                                  token=token), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.request("DELETE", path, token=admin), 404, "M_NOT_FOUND")

    # -- async upload ---------------------------------------------------------------

    async def test_async_upload(self) -> None:
        alice = await self._user()
        bob = await self._user("bob")
        created = await self.request("POST", CREATE, token=alice)
        self.assertEqual(created.code, 200, created)
        self.assertGreater(created.json["unused_expires_at"], self.clock.time_msec())
        server_name, media_id = mxc_parts(created.json["content_uri"])
        put = f"{LEGACY}/upload/{server_name}/{media_id}"
        # Not uploaded yet: a download waits timeout_ms, then 504.
        pending = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}?timeout_ms=0",
                                     token=alice)
        self.assertMatrixError(pending, 504, "M_NOT_YET_UPLOADED")
        other = await self.request("PUT", put, raw_body=PNG, headers={"Content-Type": "image/png"},
                                   token=bob)
        self.assertMatrixError(other, 403, "M_FORBIDDEN")
        first = await self.request("PUT", put, raw_body=PNG, headers={"Content-Type": "image/png"},
                                   token=alice)
        self.assertEqual(first.code, 200, first)
        self.assertEqual(first.json, {})
        again = await self.request("PUT", put, raw_body=JPEG, headers={"Content-Type": "image/jpeg"},
                                   token=alice)
        self.assertMatrixError(again, 409, "M_CANNOT_OVERWRITE_MEDIA")
        dl = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=alice)
        self.assertEqual(dl.raw, PNG)
        unknown = await self.request("PUT", f"{LEGACY}/upload/test.local/unknownid", raw_body=PNG,
                                     headers={"Content-Type": "image/png"}, token=alice)
        self.assertMatrixError(unknown, 404, "M_NOT_FOUND")

    async def test_async_upload_expired_and_pending_limit(self) -> None:
        alice = await self._user()
        ids = []
        for _ in range(5):
            created = await self.request("POST", CREATE, token=alice)
            ids.append(mxc_parts(created.json["content_uri"])[1])
        limited = await self.request("POST", CREATE, token=alice)
        self.assertMatrixError(limited, 429, "M_LIMIT_EXCEEDED")
        self.advance(25 * 3600)
        expired = await self.request("PUT", f"{LEGACY}/upload/test.local/{ids[0]}", raw_body=PNG,
                                     headers={"Content-Type": "image/png"}, token=alice)
        self.assertMatrixError(expired, 404, "M_NOT_FOUND")
        dl = await self.request("GET", f"{AUTHED}/download/test.local/{ids[0]}", token=alice)
        self.assertMatrixError(dl, 404, "M_NOT_FOUND")
        self.assertEqual((await self.request("POST", CREATE, token=alice)).code, 200)

    async def test_download_waits_for_async_upload(self) -> None:
        alice = await self._user()
        created = await self.request("POST", CREATE, token=alice)
        _, media_id = mxc_parts(created.json["content_uri"])
        waiting = defer.ensureDeferred(
            self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=alice))
        put = await self.request("PUT", f"{LEGACY}/upload/test.local/{media_id}", raw_body=PNG,
                                 headers={"Content-Type": "image/png"}, token=alice)
        self.assertEqual(put.code, 200, put)
        resp = await waiting
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.raw, PNG)

    # -- thumbnails -----------------------------------------------------------------

    async def thumb(self, token: str, media_id: str, query: str) -> Any:
        return await self.request("GET", f"{AUTHED}/thumbnail/test.local/{media_id}?{query}",
                                  token=token)

    async def test_thumbnail_scale_and_crop(self) -> None:
        token = await self._user()
        _, media_id = mxc_parts(await self.upload_ok(token))
        # Default thumbnail_sizes (Synapse's): 32x32 and 96x96 crop, 320x240, 640x480 and
        # 800x600 scale; a request gets the smallest of its method that covers it, else
        # the largest, never larger than the 640x480 source.
        for query, size, ctype in (("width=96&height=96&method=scale", (320, 240), "image/png"),
                                   ("width=96&height=96&method=crop", (96, 96), "image/png"),
                                   ("width=320&height=100&method=crop", (96, 96), "image/png"),
                                   ("width=2000&height=2000", (640, 480), "image/png")):
            resp = await self.thumb(token, media_id, query)
            self.assertEqual(resp.code, 200, (query, resp))
            self.assertEqual(resp.header("Content-Type"), ctype)
            self.assertEqual(Image.open(io.BytesIO(resp.raw)).size, size, query)
        # Cached: the second request is served from the store, identical bytes.
        first = await self.thumb(token, media_id, "width=96&height=96&method=crop")
        stored = await self.hs_media_store().get_thumbnail(media_id, 96, 96, "crop")
        self.assertEqual(stored.size, len(first.raw))
        again = await self.thumb(token, media_id, "width=96&height=96&method=crop")
        self.assertEqual(again.raw, first.raw)
        legacy = await self.request("GET", f"{LEGACY}/thumbnail/test.local/{media_id}?width=32&height=32")
        self.assertEqual(legacy.code, 200, legacy)

    async def test_thumbnail_formats(self) -> None:
        token = await self._user()
        for data, ctype, expect in ((JPEG, "image/jpeg", "image/jpeg"),
                                    (make_image("GIF"), "image/gif", "image/png"),
                                    (make_image("WEBP"), "image/webp", "image/jpeg")):
            _, media_id = mxc_parts(await self.upload_ok(token, data, ctype))
            resp = await self.thumb(token, media_id, "width=64&height=64&method=scale")
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.header("Content-Type"), expect)
            self.assertEqual(Image.open(io.BytesIO(resp.raw)).size, (320, 240))

    def thumbnail_files(self, media_id: str) -> list[str]:
        """The cached thumbnail files of ``media_id`` in the store (local filesystem)."""
        folder = os.path.join(self.config.media.media_dir, "thumbnails", media_id[:2],
                              media_id[2:4], media_id[4:])
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    async def test_thumbnail_sizes_are_a_fixed_set(self) -> None:
        """Finding 6: odd sizes map to a configured one (one cached thumbnail, not one per
        requested size); 4000x4000 gives the largest configured size."""
        token = await self._user()
        _, media_id = mxc_parts(await self.upload_ok(token, make_image("PNG", (1000, 750))))
        store = self.hs_media_store()
        first = await self.thumb(token, media_id, "width=33&height=41&method=crop")
        second = await self.thumb(token, media_id, "width=77&height=90&method=crop")
        self.assertEqual((first.code, second.code), (200, 200), (first, second))
        self.assertEqual(first.raw, second.raw)
        self.assertEqual(Image.open(io.BytesIO(first.raw)).size, (96, 96))
        thumbs = await store.list_thumbnails(media_id)
        self.assertEqual([(t.width, t.height, t.method) for t in thumbs], [(96, 96, "crop")])
        self.assertEqual(self.thumbnail_files(media_id), ["96-96-crop"])
        big = await self.thumb(token, media_id, "width=4000&height=4000&method=scale")
        self.assertEqual(big.code, 200, big)
        self.assertEqual(Image.open(io.BytesIO(big.raw)).size, (800, 600))
        # However many sizes are asked for, at most len(thumbnail_sizes) are cached ...
        for w in range(1, 1200, 37):
            for method in ("scale", "crop"):
                resp = await self.thumb(token, media_id, f"width={w}&height={w + 3}&method={method}")
                self.assertEqual(resp.code, 200, resp)
        thumbs = await store.list_thumbnails(media_id)
        self.assertEqual({(t.width, t.height, t.method) for t in thumbs},
                         {(32, 32, "crop"), (96, 96, "crop"), (320, 240, "scale"),
                          (640, 480, "scale"), (800, 600, "scale")})
        self.assertEqual(len(self.thumbnail_files(media_id)), 5)
        # ... and they count against the owner's quota.
        self.assertEqual(await store.used_bytes("@alice:test.local"),
                         (await store.get(media_id)).size + sum(t.size for t in thumbs))

    async def test_concurrent_thumbnail_requests_generate_once(self) -> None:
        """Requests arriving while a thumbnail is being made wait for it: one decode."""
        from homeserver.media import thumbnailer

        calls = []
        real = thumbnailer.generate

        def slow_generate(*args: Any) -> Any:
            calls.append(args[2:5])
            time.sleep(0.3)  # on a thread: the other requests arrive meanwhile
            return real(*args)

        self.patch(thumbnailer, "generate", slow_generate)
        token = await self._user()
        _, media_id = mxc_parts(await self.upload_ok(token, make_image("PNG", (1000, 750))))
        results = await defer.gatherResults([
            defer.ensureDeferred(self.thumb(token, media_id, f"width={w}&height={w}&method=scale"))
            for w in (100, 150, 200, 240)])
        self.assertEqual({r.code for r in results}, {200})
        self.assertEqual(len({r.raw for r in results}), 1)
        self.assertEqual(len(await self.hs_media_store().list_thumbnails(media_id)), 1)
        self.assertEqual(calls, [(320, 240, "scale")])

    async def test_thumbnail_bad_input(self) -> None:
        token = await self._user()
        _, media_id = mxc_parts(await self.upload_ok(token))
        self.assertMatrixError(await self.thumb(token, media_id, "width=96"), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.thumb(token, media_id, "width=96&height=96&method=zoom"),
                               400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.thumb(token, media_id, "width=0&height=96"), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.thumb(token, media_id, "width=x&height=96"), 400,
                               "M_INVALID_PARAM")
        _, pdf = mxc_parts(await self.upload_ok(token, b"%PDF-1.4\n", "application/pdf"))
        self.assertMatrixError(await self.thumb(token, pdf, "width=96&height=96"), 400, "M_UNKNOWN")

    async def test_thumbnail_decompression_bomb(self) -> None:
        token = await self._user()
        # 6000x6000 pixels in a small PNG; the test config allows 4M pixels.
        bomb = make_image("PNG", (6000, 6000), "1")
        self.assertLess(len(bomb), self.max_upload)
        _, media_id = mxc_parts(await self.upload_ok(token, bomb, "image/png"))
        resp = await self.thumb(token, media_id, "width=32&height=32")
        self.assertMatrixError(resp, 400, "M_UNKNOWN")

    # -- preview_url ----------------------------------------------------------------

    async def test_preview_disabled_by_default(self) -> None:
        token = await self._user()
        for path in (f"{AUTHED}/preview_url", f"{LEGACY}/preview_url"):
            resp = await self.request("GET", path + "?url=http://127.0.0.1/", token=token)
            self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")


class LocalMediaTest(MediaTestMixin, HomeserverTestCase):
    def media_config(self) -> dict[str, Any]:
        return {"max_image_pixels": 4_000_000}

    async def test_files_stored_under_media_dir(self) -> None:
        token = await self._user()
        _, media_id = mxc_parts(await self.upload_ok(token))
        path = os.path.join(self.config.media.media_dir, "local", media_id[:2], media_id[2:4],
                            media_id[4:])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), PNG)
        self.assertEqual(os.listdir(os.path.join(self.config.media.media_dir, "tmp")), [])


class MediaPolicyTest(HomeserverTestCase):
    """Config switches: allow-list, quota, deny list, legacy download off."""

    def config_overrides(self) -> dict[str, Any]:
        self.deny_file = os.path.join(self.mktemp() + "-deny")
        with open(self.deny_file, "w") as f:
            f.write("# denied\n" + hashlib.sha256(b"evil bytes").hexdigest() + "\n")
        return {"media": {"allowed_content_types": ["image/*", "application/octet-stream"],
                          "user_quota": 1000, "legacy_unauthenticated_download": False,
                          "sha256_deny_list_file": self.deny_file}}

    async def test_policies(self) -> None:
        token = (await self.register("alice"))["access_token"]
        up = await self.request("POST", UPLOAD, raw_body=b"hello", token=token,
                                headers={"Content-Type": "text/plain"})
        self.assertMatrixError(up, 403, "M_FORBIDDEN")
        evil = await self.request("POST", UPLOAD, raw_body=b"evil bytes", token=token,
                                  headers={"Content-Type": "application/octet-stream"})
        self.assertMatrixError(evil, 400, "M_UNKNOWN")
        ok = await self.request("POST", UPLOAD, raw_body=b"x" * 600, token=token,
                                headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(ok.code, 200, ok)
        over = await self.request("POST", UPLOAD, raw_body=b"y" * 600, token=token,
                                  headers={"Content-Type": "application/octet-stream"})
        self.assertMatrixError(over, 403, "M_FORBIDDEN")
        _, media_id = mxc_parts(ok.json["content_uri"])
        legacy = await self.request("GET", f"{LEGACY}/download/test.local/{media_id}")
        self.assertMatrixError(legacy, 404, "M_NOT_FOUND")
        legacy_thumb = await self.request("GET", f"{LEGACY}/thumbnail/test.local/{media_id}?width=1&height=1")
        self.assertMatrixError(legacy_thumb, 404, "M_NOT_FOUND")
        authed = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=token)
        self.assertEqual(authed.code, 200, authed)


class _Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return (b"<html><head><title>Fallback</title><meta property='og:title' content='Hello'>"
                b"<meta name='description' content='A page'></head><body>hi</body></html>")


class PreviewEnabledTest(HomeserverTestCase):
    allow: list[str] = []

    def config_overrides(self) -> dict[str, Any]:
        return {"media": {"url_preview": {"enabled": True, "ip_range_allowlist": self.allow,
                                          "timeout": 5}}}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.page_port = reactor.listenTCP(0, server.Site(_Page()), interface="127.0.0.1")
        self.addCleanup(self.page_port.stopListening)
        self.page = f"http://127.0.0.1:{self.page_port.getHost().port}/"

    async def test_private_addresses_refused(self) -> None:
        token = (await self.register("alice"))["access_token"]
        literal = await self.request("GET", f"{AUTHED}/preview_url?url={self.page}", token=token)
        self.assertMatrixError(literal, 403, "M_FORBIDDEN")
        port = self.page_port.getHost().port
        named = await self.request("GET", f"{AUTHED}/preview_url?url=http://localhost:{port}/",
                                   token=token)
        self.assertEqual(named.code, 502, named)
        bad = await self.request("GET", f"{AUTHED}/preview_url?url=file:///etc/passwd", token=token)
        self.assertMatrixError(bad, 400, "M_INVALID_PARAM")
        missing = await self.request("GET", f"{AUTHED}/preview_url", token=token)
        self.assertMatrixError(missing, 400, "M_MISSING_PARAM")


class PreviewAllowListedTest(PreviewEnabledTest):
    allow = ["127.0.0.1/32"]

    async def test_private_addresses_refused(self) -> None:
        token = (await self.register("alice"))["access_token"]
        resp = await self.request("GET", f"{LEGACY}/preview_url?url={self.page}", token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"og:title": "Hello", "og:description": "A page"})
