"""Builds the media repository from the config (kept out of ``app.py`` so the
composition root only gains a line)."""

from __future__ import annotations

import os
from typing import Any

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.media.backends import FileSystemBackend, MediaBackend, S3Backend
from homeserver.media.handler import MediaHandler
from homeserver.media.preview import UrlPreviewer
from plugins.host import PluginHost
from plugins.media_scan import BuiltinMediaScanner
from storage.stores.media import MediaStore


def build_media(config: Config, clock: Clock, store: MediaStore,
                plugins: PluginHost, reactor: Any) -> tuple[MediaHandler, UrlPreviewer]:
    media = config.media
    if media.builtin_scanner and not plugins.pm.has_plugin("parley.builtin_media_scan"):
        plugins.pm.register(BuiltinMediaScanner(media.sha256_deny_list_file),
                                name="parley.builtin_media_scan")
    backend: MediaBackend
    if media.store == "s3":
        assert media.s3 is not None  # the loader insists
        backend = S3Backend(media.s3, os.path.join(media.media_dir, "tmp"))
    else:
        backend = FileSystemBackend(media.media_dir)

    def scan(path: str, content_type: str, sha256: str) -> str | None:
        return plugins.scan_media_blocking(path, content_type, sha256)

    handler = MediaHandler(config.server_name, media, clock, store, backend, scan)
    return handler, UrlPreviewer(media.url_preview, reactor, handler)
