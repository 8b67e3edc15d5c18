"""An example Parley plugin: a keyword/regex spam filter on events and an invite
blocklist by server.

Hooks (see Parley's ``plugins/hookspecs.py``):

- ``plugin_setup(api)``: reads this plugin's config (validated by Parley against
  ``CONFIG_SCHEMA`` before the call) and compiles the patterns; a bad pattern stops
  the server at start-up with an error naming the plugin.
- ``check_event_for_spam(event, room)``: refuses (403 ``M_FORBIDDEN`` with
  ``refusal_message``) an event whose text (``body``, ``formatted_body``, and the same
  keys of an edit's ``m.new_content``) contains a keyword (case-insensitive) or
  matches a regular expression.
- ``user_may_invite(inviter, invitee, room_id)``: refuses an invite when the
  invitee's or the inviter's server is on ``blocked_servers`` (``example.org``
  matches only that server; ``*.example.org`` matches its subdomains too).

Only plugins named in Parley's ``plugins:`` config load: installing this package
alone changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("parley")

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "keywords": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "patterns": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "blocked_servers": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "refusal_message": {"type": "string", "minLength": 1, "maxLength": 200},
    },
}
DEFAULT_MESSAGE = "This message was refused by the server's spam filter"
TEXT_KEYS = ("body", "formatted_body")
# Events are at most 64 KiB; never run the patterns over more than this much text.
MAX_TEXT = 65536


class Settings:
    def __init__(self, config: dict[str, Any]) -> None:
        self.keywords = [k.casefold() for k in config.get("keywords", [])]
        try:
            self.patterns = [re.compile(p) for p in config.get("patterns", [])]
        except re.error as e:
            raise ValueError(f"patterns: invalid regular expression: {e}") from e
        self.blocked = [s.lower() for s in config.get("blocked_servers", [])]
        self.message = config.get("refusal_message", DEFAULT_MESSAGE)


SETTINGS = Settings({})


@hookimpl
def plugin_setup(api: Any) -> None:
    global SETTINGS
    SETTINGS = Settings(api.config)


def event_texts(content: Any) -> list[str]:
    """The human-readable strings of an event's content (and of an edit's new content)."""
    if not isinstance(content, dict):
        return []
    out = [content[k] for k in TEXT_KEYS if isinstance(content.get(k), str)]
    new = content.get("m.new_content")
    if isinstance(new, dict):
        out += [new[k] for k in TEXT_KEYS if isinstance(new.get(k), str)]
    return [t[:MAX_TEXT] for t in out]


def is_spam(texts: list[str], settings: Settings) -> bool:
    for text in texts:
        folded = text.casefold()
        if any(k in folded for k in settings.keywords):
            return True
        if any(p.search(text) for p in settings.patterns):
            return True
    return False


def server_of(user_id: str) -> str:
    return user_id.partition(":")[2].lower()


def server_blocked(server: str, blocked: list[str]) -> bool:
    for entry in blocked:
        if entry.startswith("*."):
            if server == entry[2:] or server.endswith(entry[1:]):
                return True
        elif server == entry:
            return True
    return False


@hookimpl
def check_event_for_spam(event: Any) -> str | None:
    """A reason string refuses the event (403 M_FORBIDDEN); None allows it."""
    return SETTINGS.message if is_spam(event_texts(event.content), SETTINGS) else None


@hookimpl
def user_may_invite(inviter: str, invitee: str) -> str | None:
    for user_id in (invitee, inviter):
        if server_blocked(server_of(user_id), SETTINGS.blocked):
            return "Invites to or from that server are not allowed here"
    return None
