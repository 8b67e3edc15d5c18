"""Media endpoints: upload (``/_matrix/media/v3/upload``, ``/v1/create`` + PUT), download,
thumbnail, config and preview_url on the authenticated ``/_matrix/client/v1/media``
paths and the legacy ``/_matrix/media/v3`` ones, plus Synapse's admin endpoints to
quarantine, unquarantine and delete local media.

Downloads carry ``Content-Disposition`` (``inline`` only for plain raster images),
the sandbox CSP (set for all media paths by the HTTP layer) and ``nosniff``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from homeserver.handlers.admin_actions import AdminMediaHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest, StreamedBody
from homeserver.media.handler import MediaHandler
from homeserver.media.preview import UrlPreviewer
from homeserver.media.thumbnailer import METHODS
from homeserver.rest.admin._auth import AdminAuth, admin_paths
from storage.stores.media import MediaInfo

LEGACY_VERSIONS = ("v3", "r0", "v1")
AUTHED = "/_matrix/client/v1/media"
# Served inline: raster images a browser renders without running anything.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/apng",
                          "image/avif"})
TEXT_TYPES = frozenset({"text/plain", "text/csv", "text/css", "application/json"})
DEFAULT_TIMEOUT_MS = 20_000


def legacy(path: str) -> list[str]:
    return [f"/_matrix/media/{v}{path}" for v in LEGACY_VERSIONS]


def content_disposition(content_type: str, file_name: str | None) -> str:
    """RFC 6266: ``inline``/``attachment`` plus, when the URL named one, the file name
    (``filename*`` UTF-8 form unless it is a plain token)."""
    disposition = "inline" if content_type in INLINE_TYPES else "attachment"
    if file_name:
        if all(c.isascii() and (c.isalnum() or c in "!#$&+-.^_`|~") for c in file_name):
            return f"{disposition}; filename={file_name}"
        return f"{disposition}; filename*=utf-8''{quote(file_name.encode('utf-8'), safe='')}"
    return disposition


def served_type(content_type: str | None) -> str:
    ctype = content_type or "application/octet-stream"
    return f"{ctype}; charset=UTF-8" if ctype in TEXT_TYPES else ctype


class MediaServlets:
    def __init__(self, media: MediaHandler, previewer: UrlPreviewer, admin: AdminAuth,
                 admin_media: AdminMediaHandler) -> None:
        self._media = media
        self._admin_media = admin_media
        self._preview = previewer
        self._admin = admin
        self._legacy_download = media.config.legacy_unauthenticated_download

    def register(self, router: Router) -> None:
        router.add("POST", legacy("/upload"), self.on_upload)
        router.add("POST", "/_matrix/media/v1/create", self.on_create)
        router.add("PUT", legacy("/upload/{serverName}/{mediaId}"), self.on_upload_to)
        router.add("GET", [f"{AUTHED}/config", *legacy("/config")], self.on_config)
        router.add("GET", [f"{AUTHED}/preview_url", *legacy("/preview_url")], self.on_preview)
        for auth, prefix in (("required", AUTHED), ("none", None)):
            dl = [f"{AUTHED}/download/{{serverName}}/{{mediaId}}",
                  f"{AUTHED}/download/{{serverName}}/{{mediaId}}/{{fileName}}"] if prefix else (
                legacy("/download/{serverName}/{mediaId}")
                + legacy("/download/{serverName}/{mediaId}/{fileName}"))
            th = [f"{AUTHED}/thumbnail/{{serverName}}/{{mediaId}}"] if prefix else legacy(
                "/thumbnail/{serverName}/{mediaId}")
            router.add("GET", dl, self.on_download if prefix else self.on_legacy_download, auth=auth)
            router.add("GET", th, self.on_thumbnail if prefix else self.on_legacy_thumbnail, auth=auth)
        router.add("POST", admin_paths("/media/quarantine/{serverName}/{mediaId}"), self.on_quarantine)
        router.add("POST", admin_paths("/media/unquarantine/{serverName}/{mediaId}"),
                   self.on_unquarantine)
        router.add("DELETE", admin_paths("/media/{serverName}/{mediaId}"), self.on_delete)

    # -- upload ---------------------------------------------------------------------

    @staticmethod
    def _declared_length(req: ApiRequest) -> int | None:
        raw = req.raw.getHeader("content-length")
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError as e:
            raise MatrixError(400, "Content-Length value is invalid", Codes.INVALID_PARAM) from e

    async def on_upload(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        req.query("filename")  # accepted (and checked to be UTF-8) but never stored
        uri = await self._media.upload(r.user_id, req.raw.content, req.raw.getHeader("content-type"),
                                       self._declared_length(req))
        return 200, {"content_uri": uri}

    async def on_create(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        uri, expires = await self._media.create(r.user_id)
        return 200, {"content_uri": uri, "unused_expires_at": expires}

    async def on_upload_to(self, req: ApiRequest, serverName: str, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        if serverName != self._media.server_name:
            raise MatrixError(404, "Unknown media ID", Codes.NOT_FOUND)
        req.query("filename")
        await self._media.upload(r.user_id, req.raw.content, req.raw.getHeader("content-type"),
                                 self._declared_length(req), media_id=mediaId)
        return 200, {}

    async def on_config(self, req: ApiRequest) -> tuple[int, Any]:
        req.require_requester()
        return 200, {"m.upload.size": self._media.config.max_upload_size}

    async def on_preview(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if not self._preview.enabled:
            # What Synapse answers with url_preview_enabled: false.
            raise MatrixError(404, "Unrecognized request", Codes.UNRECOGNIZED)
        url = req.query("url")
        if not url:
            raise MatrixError(400, "Missing 'url' parameter", Codes.MISSING_PARAM)
        return 200, await self._preview.preview(url, r.user_id)

    # -- download -------------------------------------------------------------------

    def _timeout(self, req: ApiRequest) -> int:
        return req.query_int("timeout_ms", DEFAULT_TIMEOUT_MS) or 0

    async def _serve(self, req: ApiRequest, info: MediaInfo, file_name: str | None,
                     allow_redirect: bool) -> tuple[int, Any]:
        ctype = info.content_type or "application/octet-stream"
        disposition = content_disposition(ctype, file_name)
        req.raw.setHeader("Content-Disposition", disposition)
        req.raw.setHeader("X-Robots-Tag", "noindex, nofollow, noarchive, noimageindex")
        if allow_redirect:
            url = await self._media.presigned_url(info, served_type(ctype), disposition)
            if url is not None:
                req.raw.setHeader("Location", url)
                return 307, b""
        f, size, cleanup = await self._media.open_media(info)
        req.raw.setHeader("Content-Type", served_type(ctype))
        return 200, StreamedBody(f, size, cleanup)

    async def on_download(self, req: ApiRequest, serverName: str, mediaId: str,  # noqa: N803
                          fileName: str | None = None) -> tuple[int, Any]:  # noqa: N803
        req.require_requester()
        if serverName != self._media.server_name and self._media.remote is not None:
            return await self._serve_remote(req, serverName, mediaId, fileName)
        info = await self._media.get_media(serverName, mediaId, self._timeout(req))
        return await self._serve(req, info, fileName, allow_redirect=True)

    async def _serve_remote(self, req: ApiRequest, server_name: str, media_id: str,
                            file_name: str | None) -> tuple[int, Any]:
        """Another server's media, through the remote media cache (federation on)."""
        info = await self._media.remote.get_media(server_name, media_id, self._timeout(req))
        f, size, cleanup = await self._media.remote.open_media(info)
        req.raw.setHeader("Content-Disposition", content_disposition(info.content_type,
                                                                     file_name))
        req.raw.setHeader("X-Robots-Tag", "noindex, nofollow, noarchive, noimageindex")
        req.raw.setHeader("Content-Type", served_type(info.content_type))
        return 200, StreamedBody(f, size, cleanup)

    def _check_legacy(self) -> None:
        if not self._legacy_download:
            raise MatrixError(404, "Not found", Codes.NOT_FOUND)

    async def on_legacy_download(self, req: ApiRequest, serverName: str, mediaId: str,  # noqa: N803
                                 fileName: str | None = None) -> tuple[int, Any]:  # noqa: N803
        self._check_legacy()
        info = await self._media.get_media(serverName, mediaId, self._timeout(req))
        return await self._serve(req, info, fileName, allow_redirect=req.query_bool("allow_redirect"))

    async def _thumbnail(self, req: ApiRequest, server_name: str, media_id: str,
                         remote: bool = False) -> tuple[int, Any]:
        """``remote``: other servers' media may be fetched (the authenticated path only)."""
        width, height = req.query_int("width"), req.query_int("height")
        if width is None or height is None:
            raise MatrixError(400, "Missing 'width' or 'height' parameter", Codes.MISSING_PARAM)
        # Any positive size: it only selects one of the configured thumbnail sizes.
        if width <= 0 or height <= 0:
            raise MatrixError(400, "Invalid thumbnail size", Codes.INVALID_PARAM)
        method = req.query("method", "scale") or "scale"
        if method not in METHODS:
            raise MatrixError(400, "Query parameter 'method' must be scale or crop", Codes.INVALID_PARAM)
        if remote and server_name != self._media.server_name and self._media.remote is not None:
            ctype, data = await self._media.remote.thumbnail(server_name, media_id, width,
                                                             height, method, self._timeout(req))
        else:
            info = await self._media.get_media(server_name, media_id, self._timeout(req))
            data, ctype = await self._media.thumbnail(info, width, height, method)
        req.raw.setHeader("Content-Type", ctype)
        req.raw.setHeader("Content-Disposition", "inline; filename=thumbnail." + ctype.split("/")[1])
        return 200, data

    async def on_thumbnail(self, req: ApiRequest, serverName: str, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        req.require_requester()
        return await self._thumbnail(req, serverName, mediaId, remote=True)

    async def on_legacy_thumbnail(self, req: ApiRequest, serverName: str,  # noqa: N803
                                  mediaId: str) -> tuple[int, Any]:  # noqa: N803
        self._check_legacy()
        return await self._thumbnail(req, serverName, mediaId)

    # -- admin ----------------------------------------------------------------------

    async def on_quarantine(self, req: ApiRequest, serverName: str, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        requester = await self._admin.require_admin(req)
        await self._admin_media.quarantine(requester, serverName, mediaId)
        return 200, {}

    async def on_unquarantine(self, req: ApiRequest, serverName: str,  # noqa: N803
                              mediaId: str) -> tuple[int, Any]:  # noqa: N803
        requester = await self._admin.require_admin(req)
        await self._admin_media.unquarantine(requester, serverName, mediaId)
        return 200, {}

    async def on_delete(self, req: ApiRequest, serverName: str, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        requester = await self._admin.require_admin(req)
        if serverName != self._media.server_name:
            # Synapse's answer for remote media.
            raise MatrixError(400, "Can only delete local media", Codes.UNKNOWN)
        await self._admin_media.delete(requester, serverName, mediaId)
        return 200, {"deleted_media": [mediaId], "total": 1}
