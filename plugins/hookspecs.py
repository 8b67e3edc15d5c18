"""The hooks Parley calls, each with when, what its arguments are, what a return value
means, and what happens when a plugin fails.

Every hook is called through :class:`plugins.host.PluginHost`, one plugin at a time,
in the order the config lists the plugins (built-ins first). Unless a hook says
otherwise an implementation may be a plain function or return a Deferred or a
coroutine (``async def``); the host awaits both. Plain functions run on the reactor
thread and must not block (do blocking I/O in ``async`` code or a thread).

Containment: each call has a timeout (``plugins_config.timeouts.<hook>``, else the
default in :data:`plugins.host.HOOKS`). A plugin that raises, runs past its timeout
or returns a value the hook does not allow is logged (plugin, hook, exception type:
never arguments or content), counted in ``parley_plugin_hook_failures_total{hook,
reason}``, and the hook's **failure default** below applies. A plugin never makes a
request answer 500 or hang.

A plugin may implement any subset of the hooks and of each hook's arguments (pluggy
passes only the arguments an implementation names), so hooks can gain arguments
without breaking plugins.
"""

from __future__ import annotations

from typing import Any

import pluggy

from plugins.types import EventView, RoomView

PROJECT = "parley"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class ParleySpec:
    # ---- lifecycle

    @hookspec
    def plugin_setup(self, api: Any) -> None:
        """Called once per plugin at start-up, before the server listens, with that
        plugin's own :class:`plugins.module_api.ModuleApi` (its validated config,
        lookups, HTTP routes). Failure default: the server does not start (a plugin
        that cannot set itself up is a configuration error)."""

    # ---- gating hooks: refuse with True, a reason string or a Refusal

    @hookspec
    def check_event_for_spam(self, event: EventView, room: RoomView) -> Any:
        """Every event a local user makes (messages, state, membership, createRoom's
        events), after the auth rules passed and before it is stored; and every event of
        another server's user, after its signatures and hash, before authorisation
        (federation/ingest.py: a refused one is soft-failed, kept redacted). ``room`` is
        the room's state before the event (for a remote event, the current state).

        Return None or False to allow; True or a reason string to refuse with 403
        ``M_FORBIDDEN`` (the reason is shown to the sender); or return/raise a
        :class:`plugins.types.Refusal` for another 400/403 answer. Failure default:
        refused (fail closed, 403 ``M_FORBIDDEN``)."""

    @hookspec
    def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> Any:
        """A local user asks to join a room (``/join``, ``/rooms/{id}/join``, PUT of a
        join member event). ``is_invited``: the user holds an invite. Return value and
        failure default as :meth:`check_event_for_spam` (fail closed)."""

    @hookspec
    def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> Any:
        """A local user invites ``invitee`` (``/invite``, ``createRoom``'s ``invite``
        list, PUT of an invite member event), or a remote one invites a local user
        (federation ``/v2/invite``: refused with 403). Return value and failure default as
        :meth:`check_event_for_spam` (fail closed)."""

    @hookspec
    def user_may_create_room(self, user_id: str, request: dict[str, Any]) -> Any:
        """Before ``/createRoom`` builds anything. ``request`` is a copy of the request
        body (preset, visibility, invite, name, ...). Return value and failure default
        as :meth:`check_event_for_spam` (fail closed)."""

    @hookspec
    def user_may_create_room_alias(self, user_id: str, alias: str, room_id: str) -> Any:
        """Before an alias is created (``PUT /directory/room/{alias}``, or
        ``room_alias_name`` of ``/createRoom``). Return value and failure default as
        :meth:`check_event_for_spam` (fail closed)."""

    @hookspec
    def user_may_publish_room(self, user_id: str, room_id: str) -> Any:
        """Before a room is published in the room directory (``PUT
        /directory/list/room/{id}`` with ``public``, ``visibility: public`` on
        ``/createRoom``). Return value and failure default as
        :meth:`check_event_for_spam` (fail closed)."""

    @hookspec
    def check_username_for_spam(self, user_id: str) -> Any:
        """A user id someone wants to register (``/register``, ``/register/available``).
        Return True to refuse (403 ``M_FORBIDDEN``). Failure default: refused (fail
        closed)."""

    @hookspec
    def check_registration_for_spam(self, user_id: str | None, ip: str,
                                    user_agent: str | None, is_guest: bool) -> Any:
        """Just before an account is created by ``/register`` (``user_id`` is None when
        the server will pick one, e.g. a guest). Return value as
        :meth:`check_event_for_spam`. Failure default: refused (fail closed)."""

    @hookspec
    def scan_media(self, path: str, content_type: str, sha256: str) -> str | None:
        """Scan an uploaded file before it becomes downloadable.

        ``path`` is a local file holding the complete upload (read it, do not move it).
        Return None if clean, else a short reason (logged, not shown to the uploader);
        the first reason stops the scan and the upload is refused. Runs on a thread, so
        blocking I/O (e.g. a virus scanner socket) is allowed here and the
        implementation must be a plain function. Failure default: the upload is
        refused (fail closed).
        """

    # ---- authentication

    @hookspec
    def check_password(self, user_id: str, password: str) -> bool | None:
        """An external password check (e.g. LDAP) for an existing local account, at
        ``/login`` and the UIA password stage, before the local hash. Return True to
        accept, False to refuse, None to let the next plugin and then the local hash
        decide. A deactivated account is refused whatever the answer. Failure default:
        None (the local hash decides: a failing plugin never grants)."""

    @hookspec
    def auth_provider_login_types(self) -> list[str] | None:
        """Extra ``/login`` types this plugin handles (e.g. ``["org.example.token"]``),
        asked once at start-up and offered by ``GET /login``. Must be a plain function.
        Failure default: none offered."""

    @hookspec
    def auth_provider_login(self, login_type: str, body: dict[str, Any]) -> str | None:
        """``POST /login`` with a type this plugin offered. ``body`` is a copy of the
        request body. Return the local user id to log in (the account must exist and be
        active), or None to refuse (403 ``M_FORBIDDEN``). Failure default: refused."""

    # ---- notifications: return values are ignored; nothing waits for them

    @hookspec
    def on_new_event(self, event: EventView) -> None:
        """After each event is stored (local or not), in stream order per room. Nothing
        waits for it; failure default: logged only."""

    @hookspec
    def on_user_deactivated(self, user_id: str) -> None:
        """After an account was deactivated (its rooms left). Nothing waits for it;
        failure default: logged only."""

    @hookspec
    def on_security_event(self, event: dict[str, Any]) -> None:
        """Called after each security event is recorded (login, refresh reuse, ...).

        ``event`` holds identifiers only (type, outcome, user, device, ip, reason),
        never a password, token or message content. Nothing waits for it; failure
        default: logged only.
        """

    # ---- policy

    @hookspec
    def rate_limit_policy(self, action: str, user_id: str | None, ip: str | None) -> Any:
        """Asked on each rate-limited request: a factor on the configured rate and
        burst of ``action`` (its limit class, e.g. ``login``, ``message``) for this user
        (None before authentication) and IP: 2.0 doubles the allowance, 0.5 halves it,
        0 lifts the limit for this request, None keeps it. The first plugin (in config
        order) answering a number decides. Runs on every limited request: keep it fast
        (default timeout 0.25 s). Failure default: None (the configured limit
        applies)."""

    # ---- data protection (called by the compliance work)

    @hookspec
    def export_user_data(self, user_id: str) -> Any:
        """The plugin's data about ``user_id`` for a data export: JSON-serialisable,
        or None for nothing. Failure default: the export notes that this plugin's part
        is missing."""

    @hookspec
    def erase_user_data(self, user_id: str) -> None:
        """Erase the plugin's data about ``user_id``. Failure default: the caller is
        told which plugins failed (so the erasure can be retried)."""
