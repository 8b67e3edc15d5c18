"""preview_url with OpenGraph images (SyTest 51media/20urlpreview.pl): the page's og:image
is fetched through the guarded agent, measured and stored as local media; redirects and
image URLs are held to the same IP blocklist; sizes are capped; previews are cached."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image
from twisted.internet import reactor
from twisted.web import resource, server

from tests.harness import HomeserverTestCase

AUTHED = "/_matrix/client/v1/media"
LEGACY = "/_matrix/media/r0"


def make_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


PNG = make_png(279, 129)


def og_page(image: str) -> bytes:
    return (
        '<html prefix="og: http://ogp.me/ns#"><head><title>The Rock (1996)</title>'
        '<meta property="og:title" content="The Rock" />'
        '<meta property="og:type" content="video.movie" />'
        '<meta property="og:url" content="http://www.imdb.com/title/tt0117500/" />'
        f'<meta property="og:image" content="{image}" />'
        '<meta property="og:image:width" content="99999" />'
        '</head><body></body></html>').encode()


class _Site(resource.Resource):
    """Serves the test pages and counts requests per path."""

    isLeaf = True

    def __init__(self, pages: dict[str, tuple[int, str, bytes, dict[str, str]]]) -> None:
        super().__init__()
        self.pages = pages
        self.hits: dict[str, int] = {}

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        path = request.path.decode()
        self.hits[path] = self.hits.get(path, 0) + 1
        code, ctype, body, headers = self.pages.get(path, (404, "text/plain", b"no", {}))
        request.setResponseCode(code)
        request.setHeader(b"content-type", ctype.encode())
        for k, v in headers.items():
            request.setHeader(k.encode(), v.encode())
        return body


class UrlPreviewTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"media": {"url_preview": {"enabled": True, "ip_range_allowlist": ["127.0.0.1/32"],
                                          "timeout": 5, "max_size": 64 * 1024}}}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        # A second site on 127.0.0.2: loopback too, but not allow-listed.
        self.private = _Site({"/secret.png": (200, "image/png", PNG, {})})
        try:
            self.private_port = reactor.listenTCP(0, server.Site(self.private),
                                                  interface="127.0.0.2")
        except Exception:  # noqa: BLE001 (no 127.0.0.2 on this machine)
            self.private_port = None
        else:
            self.addCleanup(self.private_port.stopListening)
        private = (f"http://127.0.0.2:{self.private_port.getHost().port}/secret.png"
                   if self.private_port else "http://10.255.255.1/secret.png")
        self.site = _Site({
            "/test.html": (200, "text/html", og_page("test.png"), {}),
            "/test.png": (200, "image/png", PNG, {}),
            "/redirect.html": (302, "text/plain", b"", {"location": "/test.html"}),
            "/private-image.html": (200, "text/html; charset=utf-8", og_page(private), {}),
            "/redirect-private.html": (200, "text/html", og_page("/to-private.png"), {}),
            "/to-private.png": (302, "text/plain", b"", {"location": private}),
            "/metadata.html": (200, "text/html",
                               og_page("http://169.254.169.254/latest/meta-data/"), {}),
            "/not-image.html": (200, "text/html", og_page("/fake.png"), {}),
            "/fake.png": (200, "image/png", b"<html>not a png</html>", {}),
            "/big.html": (200, "text/html", b"<html>" + b"x" * (70 * 1024) + b"</html>", {}),
            "/image.png": (200, "image/png", make_png(10, 20), {}),
        })
        self.port = reactor.listenTCP(0, server.Site(self.site), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.token = (await self.register("alice"))["access_token"]

    async def preview(self, path: str, prefix: str = AUTHED) -> Any:
        from urllib.parse import quote

        return await self.request("GET", f"{prefix}/preview_url?url={quote(self.base + path)}",
                                  token=self.token)

    async def test_sytest_preview_with_image(self) -> None:
        resp = await self.preview("/test.html", LEGACY)
        self.assertEqual(resp.code, 200, resp)
        body = resp.json
        self.assertEqual(body["og:title"], "The Rock")
        self.assertEqual(body["og:type"], "video.movie")
        self.assertEqual(body["og:url"], "http://www.imdb.com/title/tt0117500/")
        self.assertEqual(body["matrix:image:size"], len(PNG))
        self.assertEqual((body["og:image:width"], body["og:image:height"]), (279, 129))
        self.assertEqual(body["og:image:type"], "image/png")
        self.assertTrue(body["og:image"].startswith("mxc://test.local/"), body)
        self.assertEqual(self.site.hits, {"/test.html": 1, "/test.png": 1})
        # The image is ordinary local media.
        media_id = body["og:image"].rsplit("/", 1)[1]
        dl = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=self.token)
        self.assertEqual(dl.code, 200, dl)
        self.assertEqual(dl.raw, PNG)
        # Cached: asking again fetches nothing and stores nothing new.
        again = await self.preview("/test.html")
        self.assertEqual(again.json, body)
        self.assertEqual(self.site.hits, {"/test.html": 1, "/test.png": 1})

    async def test_redirect_followed_and_relative_image_resolved(self) -> None:
        resp = await self.preview("/redirect.html")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["og:title"], "The Rock")
        self.assertTrue(resp.json["og:image"].startswith("mxc://"))

    async def test_image_url_on_blocked_address_is_left_out(self) -> None:
        for path in ("/private-image.html", "/redirect-private.html", "/metadata.html"):
            resp = await self.preview(path)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json["og:title"], "The Rock", path)
            for key in ("og:image", "og:image:width", "matrix:image:size"):
                self.assertNotIn(key, resp.json, path)
        self.assertEqual(self.private.hits, {})

    async def test_undecodable_image_is_left_out(self) -> None:
        resp = await self.preview("/not-image.html")
        self.assertEqual(resp.code, 200, resp)
        self.assertNotIn("og:image", resp.json)

    async def test_url_that_is_an_image(self) -> None:
        resp = await self.preview("/image.png")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((resp.json["og:image:width"], resp.json["og:image:height"]), (10, 20))
        self.assertTrue(resp.json["og:image"].startswith("mxc://"))

    async def test_limits_and_errors(self) -> None:
        self.assertEqual((await self.preview("/big.html")).code, 502)
        self.assertEqual((await self.preview("/missing")).code, 502)
        long = await self.request("GET", f"{AUTHED}/preview_url?url=http://a.example/{'x' * 3000}",
                                  token=self.token)
        self.assertMatrixError(long, 400, "M_INVALID_PARAM")
        blocked = await self.request(
            "GET", f"{AUTHED}/preview_url?url=http://169.254.169.254/", token=self.token)
        self.assertMatrixError(blocked, 403, "M_FORBIDDEN")
        unauth = await self.request("GET", f"{AUTHED}/preview_url?url={self.base}/test.html")
        self.assertMatrixError(unauth, 401, "M_MISSING_TOKEN")
