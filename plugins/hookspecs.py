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

    @hookspec
    def on_security_event(self, event: dict[str, Any]) -> None:
        """Called after each security event is recorded (login, refresh reuse, ...).

        ``event`` holds identifiers only (type, outcome, user, device, ip, reason),
        never a password, token or message content. Must not block: hand slow work
        to a thread.
        """
        raise NotImplementedError
