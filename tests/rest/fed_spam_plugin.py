"""A plugin used by the federation spam tests: refuses messages and topics containing
'spam', and invites sent by users whose localpart contains 'spammer'."""

from __future__ import annotations

from typing import Any

from plugins import hookimpl


@hookimpl
def check_event_for_spam(event: Any) -> str | bool | None:
    content = event.content
    if event.type == "m.room.message" and "spam" in str(content.get("body", "")):
        return "looks like spam"
    if event.type == "m.room.topic" and "spam" in str(content.get("topic", "")):
        return True
    return None


@hookimpl
def user_may_invite(inviter: str) -> str | None:
    return "no invites from spammers" if "spammer" in inviter else None
