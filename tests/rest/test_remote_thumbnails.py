"""Thumbnails of other servers' media, cached: asked from the remote server once per
configured size (then served with the remote down), counted in the cache's size bound
and evicted with files, least recently served first, and dropped or refused when the
origin media is quarantined here (also when only thumbnails of it were cached)."""

from __future__ import annotations

import io
import os
import random
import tempfile
from typing import Any

from PIL import Image

from homeserver.media import thumbnailer
from tests.rest.test_federation_keys import federation_section
from tests.rest.test_federation_media import CLIENT_MEDIA, MediaTestCase, png

SA = "/_synapse/admin/v1"


def noise(seed: int, size: int = 200) -> bytes:
    """An incompressible PNG (its size, and its thumbnails' sizes, barely vary)."""
    pixels = random.Random(seed).randbytes(size * size * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(out, "PNG")
    return out.getvalue()


def thumbnail_size(data: bytes) -> int:
    """The size of the 32x32 crop thumbnail a Parley server makes of ``data``."""
    fd, path = tempfile.mkstemp(suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return len(thumbnailer.generate(path, "image/png", 32, 32, "crop", 10**8)[0])
    finally:
        os.unlink(path)


class RemoteThumbnailTest(MediaTestCase):
    async def thumb(self, token: str, media_id: str, width: int = 32, height: int = 32,
                    method: str = "crop") -> Any:
        return await self.request(
            "GET", f"{CLIENT_MEDIA}/thumbnail/remote.test/{media_id}?width={width}"
                   f"&height={height}&method={method}", token=token)

    async def test_cached_per_configured_size(self) -> None:
        media_id = await self.remote_media(png(400, 300))
        alice = await self.token_on(self.hs, "alice")
        first = await self.thumb(alice, media_id, 32, 32)
        self.assertEqual(first.code, 200, first)
        self.assertEqual(first.header("Content-Type"), "image/png")
        self.assertEqual(Image.open(io.BytesIO(first.raw)).size, (32, 32))
        # A scaled size is another entry.
        scaled = await self.thumb(alice, media_id, 300, 200, "scale")
        self.assertEqual(scaled.code, 200, scaled)
        # The remote server goes away: both are served from the cache, also for any
        # request that maps to the same configured size (20x20 crop is 32x32 crop).
        await self.remote.stop()
        for width, height, method, raw in ((32, 32, "crop", first.raw),
                                           (20, 20, "crop", first.raw),
                                           (300, 200, "scale", scaled.raw)):
            resp = await self.thumb(alice, media_id, width, height, method)
            self.assertEqual((resp.code, resp.raw), (200, raw), (width, height, method))
        # A size never asked for needs the remote server: 502.
        resp = await self.thumb(alice, media_id, 800, 600, "scale")
        self.assertMatrixError(resp, 502, "M_UNKNOWN")
        # Nothing was downloaded for these thumbnails: the file itself is not cached.
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{media_id}",
                                  token=alice)
        self.assertMatrixError(resp, 502, "M_UNKNOWN")

    async def test_bad_requests(self) -> None:
        alice = await self.token_on(self.hs, "alice")
        resp = await self.thumb(alice, "nothere")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.thumb(alice, "x", 0, 32)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.thumb(alice, "x", 32, 32, "melt")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", f"{CLIENT_MEDIA}/thumbnail/bad..name/x?width=3"
                                         "&height=3", token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_quarantine_drops_and_refuses_thumbnails(self) -> None:
        alice = await self.token_on(self.hs, "alice")
        admin = await self.token_on(self.hs, "admin", admin=True)
        # Only a thumbnail is cached: the media can still be quarantined.
        only_thumb = await self.remote_media(png(color="blue"))
        self.assertEqual((await self.thumb(alice, only_thumb)).code, 200)
        resp = await self.request(
            "POST", f"{SA}/media/quarantine/remote.test/{only_thumb}", {}, token=admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertMatrixError(await self.thumb(alice, only_thumb), 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{only_thumb}",
                                  token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # File and thumbnail cached: both go.
        both = await self.remote_media(png(color="green"))
        resp = await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{both}",
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.thumb(alice, both)).code, 200)
        resp = await self.request("POST", f"{SA}/media/quarantine/remote.test/{both}", {},
                                  token=admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertMatrixError(await self.thumb(alice, both), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.thumb(alice, both, 300, 200, "scale"), 404,
                               "M_NOT_FOUND")
        # Nothing of either is left in the cache's bound.
        rows = await self.hs.db.query("t", "SELECT COUNT(*) FROM remote_media_thumbnails")
        self.assertEqual(int(rows[0][0]), 0)


class ThumbnailCacheBoundTest(MediaTestCase):
    FILE_A, FILE_B = noise(1), noise(2)

    def config_overrides(self) -> dict[str, Any]:
        t = thumbnail_size(self.FILE_A)
        # Room for one file and one thumbnail and a half: a second of either evicts.
        bound = len(self.FILE_A) + t + t // 2
        return {"federation": federation_section(),
                "media": {"remote_cache_max_bytes": bound,
                          "max_upload_size": 3 * len(self.FILE_A)}}

    async def test_thumbnails_counted_and_evicted_with_files(self) -> None:
        a = await self.remote_media(self.FILE_A)
        b = await self.remote_media(self.FILE_B)
        alice = await self.token_on(self.hs, "alice")

        async def download(media_id: str) -> Any:
            return await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/"
                                             f"{media_id}", token=alice)

        async def thumb(media_id: str) -> Any:
            return await self.request("GET", f"{CLIENT_MEDIA}/thumbnail/remote.test/"
                                             f"{media_id}?width=32&height=32&method=crop",
                                      token=alice)

        self.assertEqual((await download(a)).code, 200)
        self.advance(120)
        a_thumb = await thumb(a)
        self.assertEqual(a_thumb.code, 200, a_thumb)
        self.advance(120)
        # B's file does not fit beside A's: A's file (least recently served) goes, A's
        # thumbnail (served since) stays.
        self.assertEqual((await download(b)).code, 200)
        self.advance(120)
        # B's thumbnail does not fit beside B's file and A's thumbnail: A's goes.
        b_thumb = await thumb(b)
        self.assertEqual(b_thumb.code, 200, b_thumb)
        await self.remote.stop()
        self.assertEqual((await download(b)).raw, self.FILE_B)
        self.assertEqual((await thumb(b)).raw, b_thumb.raw)
        self.assertMatrixError(await download(a), 502, "M_UNKNOWN")
        self.assertMatrixError(await thumb(a), 502, "M_UNKNOWN")
