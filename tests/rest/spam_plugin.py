"""A plugin used by the tests: flags localparts containing 'spam', records events."""

from __future__ import annotations

from typing import Any

from plugins import hookimpl

SEEN: list[dict[str, Any]] = []


@hookimpl
def check_username_for_spam(user_id: str) -> bool:
    return "spam" in user_id


@hookimpl
def on_security_event(event: dict[str, Any]) -> None:
    SEEN.append(event)
