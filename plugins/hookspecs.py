"""The hooks Parley calls. Later issues add spam checks on events, rate policies,
media scanning and auth providers here."""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT = "parley"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ParleySpec:
    @hookspec
    def check_username_for_spam(self, user_id: str) -> bool:
        """Return True to refuse registering ``user_id`` (``@localpart:server``)."""
        raise NotImplementedError

    @hookspec(firstresult=True)
    def scan_media(self, path: str, content_type: str, sha256: str) -> str | None:
        """Scan an uploaded file before it becomes downloadable.

        ``path`` is a local file holding the complete upload (read it, do not move it).
        Return None if clean, else a short reason (logged, not shown to the uploader);
        the first reason stops the scan and the upload is refused. Runs on a thread, so
        blocking I/O (e.g. a virus scanner socket) is allowed here.
        """
        raise NotImplementedError

    @hookspec
    def on_security_event(self, event: dict[str, Any]) -> None:
        """Called after each security event is recorded (login, refresh reuse, ...).

        ``event`` holds identifiers only (type, outcome, user, device, ip, reason),
        never a password, token or message content. Must not block: hand slow work
        to a thread.
        """
        raise NotImplementedError
