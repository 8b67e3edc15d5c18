"""Where media bytes live: the local filesystem or an S3-compatible bucket, behind one
interface. Every blocking call (disk copy, boto3) runs on a thread, never the reactor."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from twisted.internet.threads import deferToThread

from homeserver.config.model import MediaS3Config


class MediaBackend(Protocol):
    """Objects are addressed by a key such as ``local/ab/cd/efgh`` (never user input)."""

    async def store_file(self, key: str, src_path: str, content_type: str) -> None:
        """Take ownership of ``src_path`` (moved or uploaded, then gone)."""

    async def store_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    async def open(self, key: str) -> tuple[BinaryIO, int, Callable[[], None] | None] | None:
        """An open file positioned at 0, its size and an extra cleanup; None if missing."""

    async def read_bytes(self, key: str) -> bytes | None: ...

    async def local_path(self, key: str) -> tuple[str, Callable[[], None]] | None:
        """A readable local path for ``key`` (a temp copy for remote stores) and its cleanup."""

    async def presigned_url(self, key: str, content_type: str, disposition: str) -> str | None:
        """A time-limited direct URL, or None when downloads should be proxied."""

    async def delete(self, key: str) -> None: ...


def _noop() -> None:
    return None


class FileSystemBackend:
    """``<media_dir>/<key>``; files are written to a temp name and renamed into place."""

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def _move(self, src: str, dest: str) -> None:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(src, dest)  # a rename when staging is on the same filesystem

    def _write(self, dest: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)

    async def store_file(self, key: str, src_path: str, content_type: str) -> None:
        await deferToThread(self._move, src_path, self._path(key))

    async def store_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await deferToThread(self._write, self._path(key), data)

    def _open(self, key: str) -> tuple[BinaryIO, int, Callable[[], None] | None] | None:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 (closed by the response)
        except FileNotFoundError:
            return None
        return f, os.fstat(f.fileno()).st_size, None

    async def open(self, key: str) -> tuple[BinaryIO, int, Callable[[], None] | None] | None:
        return await deferToThread(self._open, key)

    def _read(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    async def read_bytes(self, key: str) -> bytes | None:
        return await deferToThread(self._read, key)

    async def local_path(self, key: str) -> tuple[str, Callable[[], None]] | None:
        path = self._path(key)
        return (path, _noop) if os.path.isfile(path) else None

    async def presigned_url(self, key: str, content_type: str, disposition: str) -> str | None:
        return None

    async def delete(self, key: str) -> None:
        def _rm() -> None:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass

        await deferToThread(_rm)


class S3Backend:
    """An S3-compatible bucket via boto3 (clients are thread-safe; calls run on threads).

    Downloads either redirect to a pre-signed URL (``presigned_redirect``) or are
    proxied through a local temp file.
    """

    def __init__(self, config: MediaS3Config, staging_dir: str) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self._config = config
        self._bucket = config.bucket
        self._prefix = config.prefix
        self._staging = staging_dir
        os.makedirs(staging_dir, exist_ok=True)
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=BotoConfig(signature_version="s3v4", retries={"max_attempts": 3},
                              s3={"addressing_style": "path"}),
        )

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _upload(self, key: str, src: str, content_type: str) -> None:
        try:
            self._client.upload_file(src, self._bucket, self._key(key),
                                     ExtraArgs={"ContentType": content_type})
        finally:
            os.unlink(src)

    async def store_file(self, key: str, src_path: str, content_type: str) -> None:
        await deferToThread(self._upload, key, src_path, content_type)

    async def store_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await deferToThread(lambda: self._client.put_object(
            Bucket=self._bucket, Key=self._key(key), Body=data, ContentType=content_type))

    def _is_missing(self, e: Exception) -> bool:
        code = getattr(e, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def _download(self, key: str) -> tuple[BinaryIO, int, Callable[[], None] | None] | None:
        f = tempfile.TemporaryFile(dir=self._staging)  # noqa: SIM115 (closed by the response)
        try:
            self._client.download_fileobj(self._bucket, self._key(key), f)
        except Exception as e:
            f.close()
            if self._is_missing(e):
                return None
            raise
        size = f.seek(0, os.SEEK_END)  # not tell(): ranged parts may land out of order
        f.seek(0)
        return f, size, None  # type: ignore[return-value]

    async def open(self, key: str) -> tuple[BinaryIO, int, Callable[[], None] | None] | None:
        return await deferToThread(self._download, key)

    async def read_bytes(self, key: str) -> bytes | None:
        opened = await self.open(key)
        if opened is None:
            return None
        f = opened[0]
        try:
            return await deferToThread(f.read)
        finally:
            f.close()

    def _download_path(self, key: str) -> tuple[str, Callable[[], None]] | None:
        fd, path = tempfile.mkstemp(dir=self._staging, prefix="s3-")
        os.close(fd)
        try:
            self._client.download_file(self._bucket, self._key(key), path)
        except Exception as e:
            os.unlink(path)
            if self._is_missing(e):
                return None
            raise
        return path, lambda: os.path.exists(path) and os.unlink(path)  # type: ignore[func-returns-value]

    async def local_path(self, key: str) -> tuple[str, Callable[[], None]] | None:
        return await deferToThread(self._download_path, key)

    async def presigned_url(self, key: str, content_type: str, disposition: str) -> str | None:
        if not self._config.presigned_redirect:
            return None
        params = {"Bucket": self._bucket, "Key": self._key(key),
                  "ResponseContentType": content_type, "ResponseContentDisposition": disposition}
        return await deferToThread(self._client.generate_presigned_url, "get_object",
                                   Params=params, ExpiresIn=int(self._config.presigned_url_lifetime))

    async def delete(self, key: str) -> None:
        await deferToThread(lambda: self._client.delete_object(Bucket=self._bucket, Key=self._key(key)))
