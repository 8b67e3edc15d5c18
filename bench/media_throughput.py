"""Upload/download throughput of one 50 MiB file through a real Parley over loopback HTTP,
on the local filesystem store and on S3 (moto's server, in-process), proxied and with
pre-signed redirects. Not a test: prints one line per case.

    .venv/bin/python bench/media_throughput.py [--size-mb 50] [--engine sqlite]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.web.client import FileBodyProducer, HTTPConnectionPool

from homeserver.app import build_homeserver
from homeserver.auth.access_tokens import generate_signing_key_pem
from homeserver.config import parse_config


def make_config(data_dir: str, media: dict[str, Any]) -> Any:
    return parse_config({
        "server_name": "bench.local", "data_dir": data_dir,
        "listeners": [{"port": 0, "bind_addresses": ["127.0.0.1"]}],
        "database": {"engine": "sqlite", "path": os.path.join(data_dir, "bench.db")},
        "auth": {"signing_keys": [{"kid": "b", "algorithm": "EdDSA",
                                   "key": generate_signing_key_pem("EdDSA")}]},
        "password_hashing": {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1},
        "registration": {"enabled": True}, "logging": {"level": "WARNING", "format": "text"},
        "media": media,
    })


async def run_case(name: str, media: dict[str, Any], src: str, size: int) -> None:
    data_dir = tempfile.mkdtemp(prefix="parley-bench-")
    hs = await build_homeserver(make_config(data_dir, media))
    port = hs.listen(reactor)[0].getHost().port
    base = f"http://127.0.0.1:{port}"
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        body = {"username": "bench", "password": "bench-password-123"}
        first = await (await treq.post(base + "/_matrix/client/v3/register", json=body, pool=pool)).json()
        body["auth"] = {"type": "m.login.dummy", "session": first["session"]}
        token = (await (await treq.post(base + "/_matrix/client/v3/register", json=body,
                                        pool=pool)).json())["access_token"]
        auth = {"Authorization": [f"Bearer {token}"]}

        with open(src, "rb") as f:
            start = time.perf_counter()
            resp = await treq.post(base + "/_matrix/media/v3/upload", data=FileBodyProducer(f),
                                   headers={**auth, "Content-Type": ["application/octet-stream"]},
                                   pool=pool)
            uri = (await resp.json())["content_uri"]
            up = time.perf_counter() - start
        media_id = uri.rsplit("/", 1)[1]

        received = 0

        def count(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)

        start = time.perf_counter()
        resp = await treq.get(f"{base}/_matrix/client/v1/media/download/bench.local/{media_id}",
                              headers=auth, pool=pool)  # follows a pre-signed redirect
        await treq.collect(resp, count)
        down = time.perf_counter() - start
        assert received == size, (received, size)
        mb = size / 1024 / 1024
        print(f"{name:<22} upload {up:6.2f}s {mb / up:7.1f} MiB/s   download {down:6.2f}s "
              f"{mb / down:7.1f} MiB/s")
    finally:
        await pool.closeCachedConnections()
        await hs.stop()


async def main(args: argparse.Namespace) -> None:
    size = args.size_mb * 1024 * 1024
    fd, src = tempfile.mkstemp(prefix="parley-bench-src-")
    with os.fdopen(fd, "wb") as f:
        for _ in range(args.size_mb):
            f.write(os.urandom(1024 * 1024))
    media: dict[str, Any] = {"max_upload_size": size}
    try:
        await run_case("local filesystem", media, src, size)
        import boto3
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            moto_port = s.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
        server.start()
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        endpoint = f"http://127.0.0.1:{moto_port}"
        os.environ.setdefault("BENCH_S3_KEY", "bench")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                     aws_secret_access_key="bench").create_bucket(Bucket="bench")
        s3 = {"bucket": "bench", "endpoint_url": endpoint, "region": "us-east-1",
              "access_key_id": {"env": "BENCH_S3_KEY"}, "secret_access_key": {"env": "BENCH_S3_KEY"}}
        try:
            await run_case("moto S3 (proxied)", {**media, "store": "s3", "s3": s3}, src, size)
            await run_case("moto S3 (presigned)", {**media, "store": "s3",
                                                   "s3": {**s3, "presigned_redirect": True}}, src, size)
        finally:
            server.stop()
    finally:
        os.unlink(src)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=50)
    task.react(lambda _r: defer.ensureDeferred(main(parser.parse_args())))
