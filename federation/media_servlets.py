"""Media over federation.

Server side: the authenticated federation media endpoints (spec v1.11)
``GET /_matrix/federation/v1/media/download/{mediaId}`` and ``/thumbnail/{mediaId}``
serve our local media to other servers as ``multipart/mixed``: a JSON part (``{}``)
and the file part (or, with a store that hands out pre-signed URLs, a ``Location``
part). Quarantined, unknown and pending media answer as they do locally (404/504).
A blocked origin is refused (403).

Client side: :class:`RemoteMediaFetcher` is the fetch hook of the remote media cache
(homeserver/media/remote.py): the federation endpoint first, then, when the remote
server does not know it (404/400/405/501 ``M_UNRECOGNIZED`` or a non-JSON 404), the
legacy ``/_matrix/media/v3/download`` with ``allow_remote=false``. Answers are
bounded by ``media.max_upload_size`` (thumbnails by 8 MiB). A ``Location`` part is
followed once (https only, through the same SSRF guard, no further redirects).
"""

from __future__ import annotations

import secrets
from typing import Any, BinaryIO
from urllib.parse import quote

from federation.client import (
    AnswerTooLarge,
    FederationClient,
    FederationDenied,
    FederationError,
    RawAnswer,
)
from homeserver.handlers.server_blocks import ServerBlocks
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest, StreamedBody
from homeserver.media.handler import MediaHandler
from homeserver.media.remote import MAX_THUMBNAIL_BYTES
from homeserver.media.thumbnailer import METHODS
from homeserver.rest.media import content_disposition, served_type

PREFIX = "/_matrix/federation/v1/media"
DEFAULT_TIMEOUT_MS = 20_000
MAX_TIMEOUT_MS = 60_000
MULTIPART_OVERHEAD = 64 * 1024
_FALLBACK_CODES = (400, 404, 405, 501)
_MAX_PART_HEADERS = 8 * 1024


# -- multipart/mixed ---------------------------------------------------------------------

class _Concat:
    """A read-only file of ``prefix`` + an open file + ``suffix`` (what FileSender reads),
    so the media file is streamed, never read into memory."""

    def __init__(self, prefix: bytes, file: BinaryIO, suffix: bytes) -> None:
        self._pieces: list[Any] = [prefix, file, suffix]
        self._file = file

    def read(self, n: int = -1) -> bytes:
        out = b""
        while self._pieces and (n < 0 or len(out) < n):
            piece = self._pieces[0]
            want = -1 if n < 0 else n - len(out)
            if isinstance(piece, bytes):
                chunk = piece if want < 0 else piece[:want]
                rest = b"" if want < 0 else piece[want:]
                if rest:
                    self._pieces[0] = rest
                else:
                    self._pieces.pop(0)
            else:
                chunk = piece.read(want)
                if not chunk or want < 0:
                    self._pieces.pop(0)
            out += chunk
        return out

    def close(self) -> None:
        self._file.close()


def _part_headers(headers: dict[str, str]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())


def multipart_envelope(boundary: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """(everything before the file bytes, everything after them)."""
    b = boundary.encode("ascii")
    prefix = (b"--" + b + b"\r\nContent-Type: application/json\r\n\r\n{}\r\n--" + b + b"\r\n"
              + _part_headers(headers) + b"\r\n")
    return prefix, b"\r\n--" + b + b"--\r\n"


def _boundary_of(content_type: str) -> bytes | None:
    main, _, params = content_type.partition(";")
    if main.strip().lower() != "multipart/mixed":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            if 0 < len(value) <= 70:
                return value.encode("latin-1")
    return None


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/mixed`` body (RFC 2046): [(lower-case headers, bytes)];
    ValueError if it is not one."""
    boundary = _boundary_of(content_type)
    if boundary is None:
        raise ValueError("not multipart/mixed with a boundary")
    delim = b"--" + boundary
    if body.startswith(delim):
        pos = len(delim)
    else:
        first = body.find(b"\r\n" + delim)
        if first < 0:
            raise ValueError("no boundary")
        pos = first + 2 + len(delim)
    parts: list[tuple[dict[str, str], bytes]] = []
    while True:
        if body[pos:pos + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0 or len(parts) >= 4:
            raise ValueError("malformed multipart body")
        start = eol + 2
        end = body.find(b"\r\n" + delim, start)
        if end < 0:
            raise ValueError("unterminated part")
        part = body[start:end]
        headers: dict[str, str] = {}
        if part.startswith(b"\r\n"):
            content = part[2:]
        else:
            split = part.find(b"\r\n\r\n", 0, _MAX_PART_HEADERS)
            if split < 0:
                raise ValueError("part headers not terminated")
            for line in part[:split].split(b"\r\n"):
                name, sep, value = line.decode("latin-1").partition(":")
                if not sep:
                    raise ValueError("malformed part header")
                headers[name.strip().lower()] = value.strip()
            content = part[split + 4:]
        parts.append((headers, content))
        pos = end + 2 + len(delim)


# -- server side -------------------------------------------------------------------------

class FederationMediaServlets:
    def __init__(self, media: MediaHandler, blocks: ServerBlocks) -> None:
        self._media = media
        self._blocks = blocks

    def register(self, router: Router) -> None:
        router.add("GET", f"{PREFIX}/download/{{mediaId}}", self.on_download,
                   auth="federation")
        router.add("GET", f"{PREFIX}/thumbnail/{{mediaId}}", self.on_thumbnail,
                   auth="federation")

    async def _check_origin(self, req: ApiRequest) -> None:
        assert req.origin is not None
        if await self._blocks.is_blocked(req.origin):
            raise MatrixError(403, "This server does not federate with yours", Codes.FORBIDDEN)

    @staticmethod
    def _timeout(req: ApiRequest) -> int:
        return min(req.query_int("timeout_ms", DEFAULT_TIMEOUT_MS) or 0, MAX_TIMEOUT_MS)

    @staticmethod
    def _start(req: ApiRequest) -> str:
        boundary = secrets.token_hex(16)
        req.raw.setHeader("Content-Type", f"multipart/mixed; boundary={boundary}")
        return boundary

    async def on_download(self, req: ApiRequest, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        await self._check_origin(req)
        info = await self._media.get_media(self._media.server_name, mediaId, self._timeout(req))
        ctype = info.content_type or "application/octet-stream"
        disposition = content_disposition(ctype, None)
        url = await self._media.presigned_url(info, served_type(ctype), disposition)
        boundary = self._start(req)
        if url is not None:
            prefix, suffix = multipart_envelope(boundary, {"Location": url})
            return 200, prefix + suffix
        f, size, cleanup = await self._media.open_media(info)
        prefix, suffix = multipart_envelope(boundary, {
            "Content-Type": served_type(ctype), "Content-Disposition": disposition})
        return 200, StreamedBody(_Concat(prefix, f, suffix),  # type: ignore[arg-type]
                                 len(prefix) + size + len(suffix), cleanup)

    async def on_thumbnail(self, req: ApiRequest, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        await self._check_origin(req)
        width, height = req.query_int("width"), req.query_int("height")
        if width is None or height is None:
            raise MatrixError(400, "Missing 'width' or 'height' parameter", Codes.MISSING_PARAM)
        if width <= 0 or height <= 0:
            raise MatrixError(400, "Invalid thumbnail size", Codes.INVALID_PARAM)
        method = req.query("method", "scale") or "scale"
        if method not in METHODS:
            raise MatrixError(400, "Query parameter 'method' must be scale or crop",
                              Codes.INVALID_PARAM)
        req.query_bool("animated")  # checked; animated thumbnails are never made
        info = await self._media.get_media(self._media.server_name, mediaId, self._timeout(req))
        data, ctype = await self._media.thumbnail(info, width, height, method)
        prefix, suffix = multipart_envelope(self._start(req), {
            "Content-Type": ctype,
            "Content-Disposition": "inline; filename=thumbnail." + ctype.split("/")[1]})
        return 200, prefix + data + suffix


# -- client side -------------------------------------------------------------------------

def _errcode(answer: RawAnswer) -> str | None:
    import json

    try:
        body = json.loads(answer.body.decode("utf-8")) if answer.body else None
    except (ValueError, UnicodeDecodeError):
        return None
    return body.get("errcode") if isinstance(body, dict) else None


class RemoteMediaFetcher:
    """The remote media cache's hooks: fetch a file or a thumbnail from its server."""

    def __init__(self, client: FederationClient, blocks: ServerBlocks,
                 request_timeout: float) -> None:
        self._client = client
        self._blocks = blocks
        self._request_timeout = request_timeout

    async def _get(self, server: str, path: str, args: dict[str, Any], cap: int,
                   timeout_ms: int, signed: bool) -> RawAnswer:
        timeout = min(self._request_timeout, timeout_ms / 1000 + 30)
        try:
            answer = await self._client.request(server, "GET", path, args=args, signed=signed,
                                                timeout=timeout, max_size=cap, raw=True)
        except AnswerTooLarge:
            raise MatrixError(502, "Remote media is too large", Codes.TOO_LARGE) from None
        except FederationDenied:
            raise MatrixError(403, "Federation with this server is not allowed",
                              Codes.FORBIDDEN) from None
        except FederationError:
            raise MatrixError(502, "Failed to fetch remote media", Codes.UNKNOWN) from None
        assert isinstance(answer, RawAnswer)
        return answer

    @staticmethod
    def _fail(answer: RawAnswer) -> MatrixError:
        errcode = _errcode(answer)
        if answer.code == 404:
            return MatrixError(404, "Not found", Codes.NOT_FOUND)
        if answer.code == 504 and errcode == Codes.NOT_YET_UPLOADED:
            return MatrixError(504, "Media has not been uploaded yet", Codes.NOT_YET_UPLOADED)
        if errcode == Codes.TOO_LARGE:
            return MatrixError(502, "Remote media is too large", Codes.TOO_LARGE)
        return MatrixError(502, "Failed to fetch remote media", Codes.UNKNOWN)

    @staticmethod
    def _unknown_endpoint(answer: RawAnswer) -> bool:
        errcode = _errcode(answer)
        return answer.code in _FALLBACK_CODES and (
            errcode == Codes.UNRECOGNIZED or (answer.code == 404 and errcode is None))

    async def _file_part(self, answer: RawAnswer, cap: int, timeout_ms: int
                         ) -> tuple[str, bytes]:
        try:
            parts = parse_multipart(answer.headers.get("content-type", ""), answer.body)
        except ValueError:
            raise MatrixError(502, "Invalid media answer from the remote server",
                              Codes.UNKNOWN) from None
        if len(parts) != 2:
            raise MatrixError(502, "Invalid media answer from the remote server", Codes.UNKNOWN)
        headers, content = parts[1]
        if "location" in headers:
            timeout = min(self._request_timeout, timeout_ms / 1000 + 30)
            try:
                located = await self._client.get_url(headers["location"], cap, timeout)
            except AnswerTooLarge:
                raise MatrixError(502, "Remote media is too large", Codes.TOO_LARGE) from None
            except FederationError:
                raise MatrixError(502, "Failed to fetch remote media", Codes.UNKNOWN) from None
            if located.code != 200:
                raise self._fail(located)
            return located.headers.get("content-type", "application/octet-stream"), \
                located.body
        return headers.get("content-type", "application/octet-stream"), content

    async def _fetch(self, server: str, media_id: str, fed_path: str, legacy_path: str,
                     args: dict[str, Any], cap: int, timeout_ms: int) -> tuple[str, bytes]:
        if await self._blocks.is_blocked(server):
            raise MatrixError(403, "Federation with this server is not allowed",
                              Codes.FORBIDDEN)
        args = {**args, "timeout_ms": str(timeout_ms)}
        answer = await self._get(server, fed_path, args, cap + MULTIPART_OVERHEAD, timeout_ms,
                                 signed=True)
        if answer.code == 200:
            ctype, data = await self._file_part(answer, cap, timeout_ms)
        elif self._unknown_endpoint(answer):
            answer = await self._get(server, legacy_path, {**args, "allow_remote": "false"},
                                     cap, timeout_ms, signed=False)
            if answer.code != 200:
                raise self._fail(answer)
            ctype, data = answer.headers.get("content-type", "application/octet-stream"), \
                answer.body
        else:
            raise self._fail(answer)
        if len(data) > cap:
            raise MatrixError(502, "Remote media is too large", Codes.TOO_LARGE)
        return ctype, data

    async def download(self, server: str, media_id: str, max_bytes: int, timeout_ms: int
                       ) -> tuple[str, bytes]:
        mid = quote(media_id, safe="")
        return await self._fetch(server, media_id, f"{PREFIX}/download/{mid}",
                                 f"/_matrix/media/v3/download/{quote(server, safe='')}/{mid}",
                                 {}, max_bytes, timeout_ms)

    async def thumbnail(self, server: str, media_id: str, width: int, height: int,
                        method: str, timeout_ms: int) -> tuple[str, bytes]:
        mid = quote(media_id, safe="")
        args = {"width": str(width), "height": str(height), "method": method}
        return await self._fetch(server, media_id, f"{PREFIX}/thumbnail/{mid}",
                                 f"/_matrix/media/v3/thumbnail/{quote(server, safe='')}/{mid}",
                                 args, MAX_THUMBNAIL_BYTES, timeout_ms)
