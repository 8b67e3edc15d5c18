"""Consent tracking (Synapse's ``user_consent``): a user who has not accepted the current
privacy policy version may not act in rooms until they do.

* The event path (:class:`~homeserver.handlers.event_creation.EventCreationHandler`)
  asks :meth:`ConsentHandler.check_event` before building a local user's event; a user
  without consent to the current version gets 403 ``M_CONSENT_NOT_GIVEN`` with the
  ``consent_uri`` to visit, for the actions configured in ``block_actions``. Never
  refused: leaving a room, anything in the user's server notices room, the server
  notices user, application service users, profile refreshes of a joined member (the
  server sends those for the user, as Synapse's ``require_consent=False``).
* The consent page (``/_matrix/consent?u=<localpart>&h=<hmac>``) shows the policy; its
  form POSTs back and records acceptance of the version shown (time and version, one
  row per version, audited as ``consent``). ``h`` is HMAC-SHA256 of ``u`` keyed by
  ``form_secret``, as Synapse makes it, so only the link's owner can consent.
* With ``server_notice_content``, a user who logs in (or is refused) without consent
  gets one server notice per policy version with their link.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.internet import defer

from homeserver.gdpr.consent_config import ConsentConfig
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.lru import LruCache
from storage.stores.consent import ConsentRecord, ConsentStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

CONSENT_NOT_GIVEN = "M_CONSENT_NOT_GIVEN"
CONSENT_NOTICE_TYPE = "org.parley.consent"
MAX_USER_PARAM = 255
MAX_HASH_PARAM = 128
MAX_VERSION_PARAM = 64


@dataclass(frozen=True)
class ConsentPage:
    """What the consent page shows (the REST module renders it as escaped HTML)."""

    policy_name: str
    version: str
    policy_text: str
    user: str | None  # the ``u`` parameter, None for the public view
    user_hash: str | None
    has_consented: bool


class ConsentHandler:
    def __init__(self, config: ConsentConfig, server_name: str, public_baseurl: str,
                 clock: Any, store: ConsentStore, users: UserStore,
                 audit: SecurityEventRecorder) -> None:
        self._config = config
        self._server_name = server_name
        self._base = public_baseurl if public_baseurl.endswith("/") else public_baseurl + "/"
        self._clock = clock
        self._store = store
        self._users = users
        self._audit = audit
        self._consented: LruCache[tuple[str, str], bool] = LruCache(10_000)
        # Set by build_consent (below):
        self.exempt_users: set[str] = set()  # the server notices user
        self.is_appservice_user: Callable[[str], bool] = lambda _uid: False
        self.notice_room_of: Callable[[str], Any] | None = None  # async user -> room id
        self.is_joined: Callable[[str, str], Any] | None = None  # async (user, room) -> bool
        self.send_notice: Callable[[str, str], Any] | None = None  # async (user, body)

    @property
    def version(self) -> str:
        return self._config.version

    # ---- links

    def user_hash(self, user: str) -> str:
        return hmac.new(self._config.form_secret.encode("utf-8"), user.encode("utf-8"),
                        hashlib.sha256).hexdigest()

    def consent_uri(self, user_id: str) -> str:
        localpart = user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id
        return (f"{self._base}_matrix/consent?u={quote(localpart, safe='')}"
                f"&h={self.user_hash(localpart)}")

    def _user_id(self, user: str) -> str:
        return user if user.startswith("@") else f"@{user}:{self._server_name}"

    def _check_link(self, user: str, user_hash: str | None) -> str:
        """The user id a link names, once its hash is checked (403 otherwise)."""
        if not user or len(user) > MAX_USER_PARAM:
            raise MatrixError(400, "Invalid 'u' parameter", Codes.INVALID_PARAM)
        if not user_hash:
            raise MatrixError(400, "Missing 'h' parameter", Codes.MISSING_PARAM)
        if len(user_hash) > MAX_HASH_PARAM or not hmac.compare_digest(
                self.user_hash(user).encode("ascii"), user_hash.encode("utf-8", "replace")):
            raise MatrixError(403, "Invalid user id hash", Codes.FORBIDDEN)
        return self._user_id(user)

    def _policy(self, version: str | None) -> tuple[str, str]:
        version = version or self._config.version
        if len(version) > MAX_VERSION_PARAM or version not in self._config.policies:
            raise MatrixError(404, "Unknown policy version", Codes.NOT_FOUND)
        return version, self._config.policies[version]

    # ---- the consent page

    async def page(self, user: str | None, user_hash: str | None,
                   version: str | None) -> ConsentPage:
        """The policy, and for a valid link whether its user already accepted it."""
        version, text = self._policy(version)
        if user is None:
            return ConsentPage(self._config.policy_name, version, text, None, None, False)
        user_id = self._check_link(user, user_hash)
        if await self._live_user(user_id) is None:
            raise MatrixError(404, "Unknown user", Codes.NOT_FOUND)
        consented = await self._store.has_consented(user_id, version)
        return ConsentPage(self._config.policy_name, version, text, user, user_hash,
                           consented)

    async def accept(self, user: str | None, user_hash: str | None,
                     version: str | None) -> ConsentPage:
        """Record that the link's user accepted ``version`` (audited once per version)."""
        if user is None:
            raise MatrixError(400, "Missing 'u' parameter", Codes.MISSING_PARAM)
        version, text = self._policy(version)
        user_id = self._check_link(user, user_hash)
        if await self._live_user(user_id) is None:
            raise MatrixError(404, "Unknown user", Codes.NOT_FOUND)
        if await self._store.record_consent(user_id, version, self._clock.time_msec()):
            await self._audit.record("consent", "success", None, user_id=user_id,
                                     details={"version": version})
        self._consented.set((user_id, version), True)
        return ConsentPage(self._config.policy_name, version, text, user, user_hash, True)

    async def _live_user(self, user_id: str) -> Any:
        record = await self._users.get_user(user_id)
        return record if record is not None and not record.deactivated else None

    # ---- reads for the admin API and the GDPR export

    async def consents(self, user_id: str) -> list[ConsentRecord]:
        return await self._store.list_consents(user_id)

    async def consent_version(self, user_id: str) -> str | None:
        """The latest policy version the user accepted (None: none)."""
        latest = await self._store.latest_consent(user_id)
        return latest.version if latest is not None else None

    # ---- enforcement

    async def has_consented(self, user_id: str) -> bool:
        key = (user_id, self._config.version)
        if self._consented.get(key):
            return True
        if await self._store.has_consented(user_id, self._config.version):
            self._consented.set(key, True)
            return True
        return False

    async def check_event(self, sender: str, room_id: str | None, event_type: str | None,
                          state_key: str | None, content: dict[str, Any] | None) -> None:
        """Refuse a local user's event (``event_type`` None: creating a room) when the
        action is blocked and the user has not accepted the current policy."""
        if not sender.endswith(f":{self._server_name}") or sender in self.exempt_users:
            return
        action = _action(sender, event_type, state_key, content)
        if action is None or action not in self._config.block_actions:
            return
        if self.is_appservice_user(sender) or await self.has_consented(sender):
            return
        if room_id is not None and self.notice_room_of is not None \
                and await self.notice_room_of(sender) == room_id:
            return
        if action == "join" and room_id is not None and self.is_joined is not None \
                and await self.is_joined(sender, room_id):
            return  # a profile refresh of a joined member, sent by the server
        uri = self.consent_uri(sender)
        self._notify_in_background(sender)
        raise MatrixError(403, self._config.block_events_error.replace("%(consent_uri)s", uri),
                          CONSENT_NOT_GIVEN, consent_uri=uri)

    # ---- server notices

    def on_security_event(self, event: Any) -> None:
        """Audit sink: a successful login of a user without consent gets the notice."""
        if event.event_type == "login" and event.outcome == "success" and event.user_id:
            self._notify_in_background(event.user_id)

    def _notify_in_background(self, user_id: str) -> None:
        if self.send_notice is None or self._config.server_notice_body is None:
            return
        d = defer.ensureDeferred(self.maybe_send_notice(user_id))
        d.addErrback(lambda f: logger.error("consent notice failed: %s", f.getErrorMessage()))

    async def maybe_send_notice(self, user_id: str) -> bool:
        """Send the consent notice of the current version once; True if sent now."""
        body = self._config.server_notice_body
        if self.send_notice is None or body is None or user_id in self.exempt_users:
            return False
        if not user_id.endswith(f":{self._server_name}") or self.is_appservice_user(user_id):
            return False
        if await self.has_consented(user_id):
            return False
        if not await self._store.mark_notice_sent(user_id, self._config.version,
                                                  self._clock.time_msec()):
            return False
        await self.send_notice(user_id, body.replace("%(consent_uri)s",
                                                     self.consent_uri(user_id)))
        return True


def _action(sender: str, event_type: str | None, state_key: str | None,
            content: dict[str, Any] | None) -> str | None:
    """The ``block_actions`` name of an event (None: never blocked)."""
    if event_type is None:
        return "create_room"
    if event_type == "m.room.member":
        membership = (content or {}).get("membership")
        if state_key == sender:
            if membership == "leave":
                return None  # a user may always leave
            return "join" if membership in ("join", "knock") else "state"
        return "invite" if membership == "invite" else "state"
    return "state" if state_key is not None else "send"


def build_consent(config: Any, clock: Any, db: Any, stores: Any, accounts: Any, rooms: Any,
                  detection: Any) -> ConsentHandler | None:
    """Wire consent tracking when ``user_consent`` is configured (None otherwise): the
    check in the one event path, the exemptions and the login notice. ``accounts``,
    ``rooms`` and ``detection`` are the composition root's areas (typed loosely to keep
    this module out of their import graph)."""
    from homeserver.appservice.config import load_appservices
    from storage.stores.server_notices import ServerNoticeStore

    if config.user_consent is None:
        return None
    handler = ConsentHandler(config.user_consent, config.server_name, config.public_baseurl,
                             clock, ConsentStore(db), stores.users, accounts.security_events)
    services = load_appservices(config.app_service_config_files, config.server_name)
    handler.is_appservice_user = lambda uid: any(s.is_interested_in_user(uid) for s in services)
    notice_rooms = ServerNoticeStore(db)
    handler.notice_room_of = notice_rooms.get_room

    async def is_joined(user_id: str, room_id: str) -> bool:
        record = await stores.room_members.get_membership(user_id, room_id)
        return record is not None and record.membership == "join"
    handler.is_joined = is_joined
    if detection is not None:
        notices = detection.notices
        handler.exempt_users.add(notices.system_user_id)
        if notices.enabled:
            handler.send_notice = lambda uid, body: notices.send_notice(
                uid, body, notice_type=CONSENT_NOTICE_TYPE)
            accounts.security_events.add_sink(handler.on_security_event)
    rooms.event_creation.consent_check = handler.check_event
    return handler
