"""A plugin used by tests/rest/test_plugin_hooks.py: one implementation of every hook,
each refusing on a recognisable input and misbehaving (raise, hang, garbage) on
demand, recording what it saw."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from plugins import hookimpl
from plugins.types import EventView, RoomView

CONFIG_SCHEMA = {"type": "object", "additionalProperties": False,
                 "properties": {"greeting": {"type": "string"}}}

SEEN: dict[str, list[Any]] = {}
API: dict[str, Any] = {}


def _saw(hook: str, value: Any) -> None:
    SEEN.setdefault(hook, []).append(value)


def _misbehave(text: str) -> Any:
    """``raise`` raises, ``hang`` never answers, ``garbage`` answers nonsense."""
    if text == "raise":
        raise RuntimeError("secret-content-must-not-be-logged")
    if text == "hang":
        return defer.Deferred()
    if text == "garbage":
        return {"not": "an answer"}
    return None


@hookimpl
def plugin_setup(api: Any) -> None:
    API["api"] = api

    async def whoami(request: Any) -> tuple[int, Any]:
        member = None
        if "room" in request.query:
            member = await api.get_membership(request.user_id, request.query["room"])
        return 200, {"user_id": request.user_id, "greeting": api.config.get("greeting"),
                     "is_admin": await api.is_admin(request.user_id), "membership": member}

    def broken(request: Any) -> Any:
        return _misbehave(request.path_params["how"]) or "not a tuple"

    api.register_route("GET", "whoami", whoami)
    api.register_route("GET", "broken/{how}", broken, auth="none")


@hookimpl
async def check_event_for_spam(event: EventView, room: RoomView) -> Any:
    body = event.content.get("body") if isinstance(event.content, dict) else None
    _saw("check_event_for_spam", (event.type, room.room_id))
    if not isinstance(body, str):
        return None
    if "buy-now" in body:
        return "Your message looks like spam"
    bad = _misbehave(body)
    if bad is not None:
        return await bad if isinstance(bad, defer.Deferred) else bad
    return None


@hookimpl
def user_may_join_room(user_id: str, room_id: str, is_invited: bool) -> Any:
    _saw("user_may_join_room", (user_id, room_id, is_invited))
    return user_id.startswith("@nojoin")


@hookimpl
def user_may_invite(inviter: str, invitee: str, room_id: str) -> Any:
    _saw("user_may_invite", (inviter, invitee, room_id))
    return "invites to that user are blocked" if invitee.startswith("@noinvite") else None


@hookimpl
def user_may_create_room(user_id: str, request: dict[str, Any]) -> Any:
    request["name"] = "changed by the plugin"  # a copy: changes nothing
    return user_id.startswith("@nocreate")


@hookimpl
def user_may_create_room_alias(user_id: str, alias: str, room_id: str) -> Any:
    return "badalias" in alias


@hookimpl
def user_may_publish_room(user_id: str, room_id: str) -> Any:
    return user_id.startswith("@nopublish")


@hookimpl
def check_registration_for_spam(user_id: str | None, ip: str, user_agent: str | None,
                                is_guest: bool) -> Any:
    _saw("check_registration_for_spam", (user_id, ip, user_agent, is_guest))
    return user_agent == "EvilBot/1.0"


@hookimpl
def check_password(user_id: str, password: str) -> bool | None:
    if password == "external-secret":
        return True
    if user_id.startswith("@ldapdenied"):
        return False
    return None


@hookimpl
def auth_provider_login_types() -> list[str]:
    return ["org.example.token"]


@hookimpl
async def auth_provider_login(login_type: str, body: dict[str, Any]) -> str | None:
    if body.get("token") == "good":
        return body.get("user")
    bad = _misbehave(body.get("token", ""))
    if bad is not None:
        return await bad if isinstance(bad, defer.Deferred) else bad
    return None


@hookimpl
def on_new_event(event: EventView) -> None:
    _saw("on_new_event", (event.type, event.sender))


@hookimpl
async def on_user_deactivated(user_id: str) -> None:
    _saw("on_user_deactivated", user_id)
