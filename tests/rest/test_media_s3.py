"""The media tests again on the S3 store, against moto's S3 server (in-process, on a
free loopback port), plus the pre-signed redirect for downloads."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
from typing import Any

import treq
from twisted.trial import unittest

from tests.harness import HomeserverTestCase
from tests.rest.test_media import AUTHED, LEGACY, PNG, MediaTestMixin, mxc_parts

try:
    import boto3
    from moto.server import ThreadedMotoServer
except ImportError:  # pragma: no cover
    ThreadedMotoServer = None

_server: Any = None
_endpoint = ""


def moto_endpoint() -> str:
    """Start moto once per test process (stopped at exit); skip if moto is missing."""
    global _server, _endpoint
    if ThreadedMotoServer is None:
        raise unittest.SkipTest("moto[server] is not installed (pip install 'moto[server]'): "
                                "the S3 media store tests need it")
    if _server is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        _server.start()
        atexit.register(_server.stop)
        _endpoint = f"http://127.0.0.1:{port}"
    return _endpoint


os.environ.setdefault("PARLEY_TEST_S3_KEY_ID", "testing")
os.environ.setdefault("PARLEY_TEST_S3_SECRET", "testing")


def s3_store_config(presigned: bool) -> tuple[str, dict[str, Any]]:
    """A fresh bucket on the moto server and the ``media`` config using it."""
    endpoint = moto_endpoint()
    bucket = "parley-" + secrets.token_hex(6)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return bucket, {"store": "s3", "s3": {
        "bucket": bucket, "endpoint_url": endpoint, "region": "us-east-1",
        "access_key_id": {"env": "PARLEY_TEST_S3_KEY_ID"},
        "secret_access_key": {"env": "PARLEY_TEST_S3_SECRET"},
        "prefix": "media/", "presigned_redirect": presigned,
    }}


class S3MediaTestMixin(MediaTestMixin):
    presigned = False

    def store_config(self) -> dict[str, Any]:
        self.bucket, config = s3_store_config(self.presigned)
        return config

    def media_config(self) -> dict[str, Any]:
        return {"max_image_pixels": 4_000_000}

    def thumbnail_files(self, media_id: str) -> list[str]:
        prefix = f"media/thumbnails/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}/"
        return sorted(k[len(prefix):] for k in self.s3_keys() if k.startswith(prefix))

    def s3_keys(self) -> list[str]:
        client = boto3.client("s3", endpoint_url=moto_endpoint(), region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        return [o["Key"] for o in client.list_objects_v2(Bucket=self.bucket).get("Contents", [])]


class S3MediaTest(S3MediaTestMixin, HomeserverTestCase):
    """Downloads proxied through the homeserver."""

    async def test_object_in_bucket(self) -> None:
        token = (await self.register("alice"))["access_token"]
        _, media_id = mxc_parts(await self.upload_ok(token))
        self.assertIn(f"media/local/{media_id[:2]}/{media_id[2:4]}/{media_id[4:]}", self.s3_keys())
        self.assertEqual(os.listdir(os.path.join(self.config.media.media_dir, "tmp")), [])


class S3PresignedMediaTest(S3MediaTestMixin, HomeserverTestCase):
    """Authenticated downloads answered with a 307 to a pre-signed URL; the legacy
    endpoint redirects only when the client says ``allow_redirect=true``."""

    presigned = True

    async def get_no_follow(self, url: str, token: str | None) -> tuple[int, str | None, Any]:
        """GET without following redirects (treq follows them by default)."""
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        resp = await treq.get(self.base_url + url, headers=headers, pool=self.pool,
                              allow_redirects=False)
        await resp.content()
        location = (resp.headers.getRawHeaders("location") or [None])[0]
        return resp.code, location, resp.headers

    async def fetch(self, location: str) -> tuple[bytes, Any]:
        fetched = await treq.get(location, pool=self.pool)
        self.assertEqual(fetched.code, 200)
        return await fetched.content(), fetched.headers

    async def test_upload_and_download_authenticated(self) -> None:
        token = (await self.register("alice"))["access_token"]
        _, media_id = mxc_parts(await self.upload_ok(token))
        code, location, headers = await self.get_no_follow(
            f"{AUTHED}/download/test.local/{media_id}/cat.png", token)
        self.assertEqual(code, 307)
        self.assertTrue(location.startswith(moto_endpoint()), location)
        self.assertIn("X-Amz-Expires=300", location)
        self.assertIn("sandbox", headers.getRawHeaders("content-security-policy")[0])
        body, fetched = await self.fetch(location)
        self.assertEqual(body, PNG)
        self.assertEqual(fetched.getRawHeaders("content-disposition"), ["inline; filename=cat.png"])
        self.assertEqual(fetched.getRawHeaders("content-type"), ["image/png"])
        # Quarantine and auth are checked before any redirect.
        self.assertEqual((await self.get_no_follow(f"{AUTHED}/download/test.local/{media_id}", None))[0],
                         401)

    async def test_legacy_download_and_head(self) -> None:
        token = (await self.register("alice"))["access_token"]
        _, media_id = mxc_parts(await self.upload_ok(token))
        code, location, _ = await self.get_no_follow(f"{LEGACY}/download/test.local/{media_id}", None)
        self.assertEqual((code, location), (200, None))
        code, location, _ = await self.get_no_follow(
            f"{LEGACY}/download/test.local/{media_id}?allow_redirect=true", None)
        self.assertEqual(code, 307)
        self.assertEqual((await self.fetch(location))[0], PNG)

    async def test_active_types_are_attachments(self) -> None:
        token = (await self.register("alice"))["access_token"]
        _, media_id = mxc_parts(await self.upload_ok(token, b"<script>", "text/html"))
        code, location, _ = await self.get_no_follow(f"{AUTHED}/download/test.local/{media_id}", token)
        self.assertEqual(code, 307)
        _, fetched = await self.fetch(location)
        self.assertEqual(fetched.getRawHeaders("content-disposition"), ["attachment"])



class S3LargeObjectTest(HomeserverTestCase):
    """Above boto3's multipart threshold (8 MiB): parts are uploaded and downloaded in
    parallel, out of order, and the proxied download must still be complete."""

    def config_overrides(self) -> dict[str, Any]:
        return {"media": {"max_upload_size": 20 * 1024 * 1024, **s3_store_config(False)[1]}}

    async def test_large_roundtrip(self) -> None:
        token = (await self.register("alice"))["access_token"]
        blob = os.urandom(17 * 1024 * 1024 + 3)
        up = await self.request("POST", "/_matrix/media/v3/upload", raw_body=blob, token=token,
                                headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(up.code, 200, up)
        _, media_id = mxc_parts(up.json["content_uri"])
        resp = await self.request("GET", f"{AUTHED}/download/test.local/{media_id}", token=token)
        self.assertEqual(resp.code, 200)
        self.assertEqual(len(resp.raw), len(blob))
        self.assertEqual(resp.raw, blob)


logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
