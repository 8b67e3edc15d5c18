"""User-Interactive Authentication (spec: "User-Interactive Authentication API").

A request that needs UIA calls :meth:`UserInteractiveAuth.check` with the flows it
accepts. Until one flow's stages are all complete, ``check`` raises
:class:`InteractiveAuthRequired` carrying the 401 body the spec defines.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from homeserver.auth.requester import ClientInfo
from homeserver.clock import Clock
from homeserver.http.errors import Codes, InteractiveAuthRequired, MatrixError
from storage.database import Txn
from storage.stores.ui_auth import UiAuthSession, UiAuthStore

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
REGISTRATION_TOKEN = "m.login.registration_token"
# Second-factor stages (homeserver/auth/mfa.py), required of users who enabled TOTP.
TOTP = "org.parley.totp"
RECOVERY_CODE = "org.parley.recovery_code"
SECOND_FACTOR_STAGES = (TOTP, RECOVERY_CODE)
# What an enrolled user's password login answers with (a 401 in the UIA shape).
SECOND_FACTOR_REQUIRED = "ORG_PARLEY_SECOND_FACTOR_REQUIRED"
LOGIN_URI = "org.parley.login"  # the "uri" of a /login second-step session
LOGIN_FLOWS = [[PASSWORD, TOTP], [PASSWORD, RECOVERY_CODE]]

SESSION_LIFETIME_MS = 60 * 60 * 1000
LOGIN_SESSION_LIFETIME_MS = 10 * 60 * 1000

# (user_id, password) -> the canonical user id if the password is right, else None
PasswordChecker = Callable[[str, str], Awaitable[bool]]
IdentifierResolver = Callable[[dict[str, Any]], str | None]
# user id -> returns, or raises the 429 when that user's password attempts are over the
# ``uia_password`` limit: the shared per-action limiter (homeserver/ratelimit/), so the
# Redis backend and a plugin's rate_limit_policy apply (wired by homeserver/app.py).
PasswordLimit = Callable[[str], Awaitable[None]]


class SecondFactor(Protocol):
    """The second-factor checks (homeserver/auth/mfa.py's MfaHandler)."""

    async def is_enrolled(self, user_id: str) -> bool: ...

    async def verify(self, user_id: str, stage: str, code: Any,
                     client: ClientInfo | None = None) -> bool: ...


def with_second_factor(flows: list[list[str]]) -> list[list[str]]:
    """Each flow twice: completed by a TOTP code, or by a recovery code."""
    out: list[list[str]] = []
    for flow in flows:
        if any(s in flow for s in SECOND_FACTOR_STAGES):
            out.append(list(flow))
        else:
            out.extend([[*flow, TOTP], [*flow, RECOVERY_CODE]])
    return out


class StageFailed(Exception):
    def __init__(self, errcode: str, msg: str) -> None:
        super().__init__(msg)
        self.errcode = errcode
        self.msg = msg


class UserInteractiveAuth:
    def __init__(
        self,
        store: UiAuthStore,
        clock: Clock,
        check_password: PasswordChecker,
        resolve_identifier: IdentifierResolver,
        password_limiter: PasswordLimit | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._check_password = check_password
        self._resolve_identifier = resolve_identifier
        # Password-stage attempts per user being authenticated (None: unlimited).
        self.password_limiter = password_limiter
        # Told (user id or None, reason) of every refused password: the audit trail.
        self.on_password_failure: list[Callable[[str | None, str], Awaitable[None]]] = []
        # Set when MFA is wired in: every flow of an enrolled user then needs a second
        # factor stage, whichever endpoint asks (see :meth:`check`).
        self.second_factor: SecondFactor | None = None

    async def check(
        self,
        body: dict[str, Any],
        flows: list[list[str]],
        uri: str,
        method: str,
        user_id: str | None = None,
    ) -> tuple[dict[str, Any], str]:
        """Return (stage results, UIA session id) once a flow is complete."""
        auth = body.get("auth")
        if auth is not None and not isinstance(auth, dict):
            raise MatrixError(400, "'auth' must be an object", Codes.BAD_JSON)
        session = await self._session(auth, uri, method, user_id)
        if (user_id is not None and self.second_factor is not None
                and await self.second_factor.is_enrolled(user_id)):
            flows = with_second_factor(flows)
        if auth and "type" in auth:
            stage = auth["type"]
            if not isinstance(stage, str) or not any(stage in f for f in flows):
                raise self._required(session, flows, Codes.UNRECOGNIZED,
                                     "Unknown or unexpected auth type")
            if stage not in session.results:
                try:
                    if stage == REGISTRATION_TOKEN:
                        # Recorded together with the token's reservation (one per session).
                        await self._registration_token_stage(session.session_id, auth)
                    else:
                        result = await self._run_stage(stage, auth, user_id)
                        await self._store.mark_stage_complete(session.session_id, stage, result)
                except StageFailed as e:
                    raise self._required(session, flows, e.errcode, e.msg) from e
                refreshed = await self._store.get(session.session_id)
                if refreshed is None:  # spent by a concurrent request meanwhile
                    raise unknown_session()
                session = refreshed
        done = set(session.results)
        if any(set(flow) <= done for flow in flows):
            return session.results, session.session_id
        raise self._required(session, flows)

    def consumer(self, session_id: str, results: dict[str, Any]) -> Callable[[Txn], None]:
        """A step for the transaction of the action this session authorises: it spends
        the session, and the registration-token use it holds, exactly once. Raises
        :class:`~storage.stores.ui_auth.GrantSpentError` there if already spent."""
        token = results.get(REGISTRATION_TOKEN)
        return self._store.consumer(session_id, self._not_before(),
                                    token if isinstance(token, str) else None)

    def registration_consumer(
        self, session: UiAuthSession, results: dict[str, Any]
    ) -> Callable[[Txn, str], None]:
        """:meth:`consumer` for registration: it also records the account the session
        created, so a re-sent completed request gets that account (see
        :meth:`registered_user`) and can never create a second one."""
        token = results.get(REGISTRATION_TOKEN)
        return self._store.registration_consumer(
            session.session_id, self._not_before(), session.created_ts,
            token if isinstance(token, str) else None)

    async def registered_user(self, session_id: str) -> str | None:
        """The account a spent registration session created, within the session's
        lifetime; None otherwise."""
        return await self._store.registered_user(session_id, self._not_before())

    async def live_session(self, session_id: str, uri: str, method: str) -> UiAuthSession | None:
        """An unexpired, unspent session started for this ``uri``/``method`` by an
        unauthenticated client; None otherwise (``check`` then says why)."""
        session = await self._store.get(session_id)
        if (session is None or session.created_ts < self._not_before() or session.uri != uri
                or session.method != method or session.user_id is not None):
            return None
        return session

    async def set_session_value(self, session_id: str, key: str, value: Any) -> None:
        """Remember a server-side value (e.g. a password hash) with the session."""
        await self._store.set_server_value(session_id, key, value)

    async def check_password(self, user_id: str, password: str) -> bool:
        """The password stage's check (rate-limited per user) outside a UIA flow."""
        await self._limit_password(user_id)
        ok = await self._check_password(user_id, password)
        if not ok:
            await self._password_failed(user_id, "invalid password")
        return ok

    async def _limit_password(self, user_id: str) -> None:
        if self.password_limiter is not None:
            await self.password_limiter(user_id)

    async def consume(self, session_id: str) -> None:
        """Spend a completed session before acting on it, so concurrent requests
        replaying it cannot all act: only one wins, the others get what a spent
        session gets (400 ``M_UNKNOWN``)."""
        if not await self._store.consume(session_id, self._not_before()):
            raise unknown_session()

    async def expire_old_sessions(self) -> int:
        """Drop sessions older than the lifetime, releasing reserved registration tokens."""
        return await self._store.delete_expired(self._not_before())

    def _not_before(self) -> int:
        return self._clock.time_msec() - SESSION_LIFETIME_MS

    async def _session(
        self, auth: dict[str, Any] | None, uri: str, method: str, user_id: str | None
    ) -> UiAuthSession:
        sid = auth.get("session") if auth else None
        if sid is None:
            new_id = secrets.token_urlsafe(18)
            await self._store.create(new_id, self._clock.time_msec(), uri, method, user_id)
            found = await self._store.get(new_id)
            assert found is not None
            return found
        if not isinstance(sid, str):
            raise MatrixError(400, "'auth.session' must be a string", Codes.BAD_JSON)
        session = await self._store.get(sid)
        if session is None or session.created_ts < self._not_before():
            raise unknown_session()
        if session.uri != uri or session.method != method:
            raise MatrixError(403, "Requested operation has changed during the UI "
                              "authentication session.", Codes.FORBIDDEN)
        if session.user_id != user_id:
            raise MatrixError(403, "UI authentication session belongs to another user",
                              Codes.FORBIDDEN)
        return session

    def _required(
        self, session: UiAuthSession, flows: list[list[str]], errcode: str | None = None,
        error: str | None = None,
    ) -> InteractiveAuthRequired:
        body: dict[str, Any] = {
            "flows": [{"stages": list(f)} for f in flows],
            "params": {},
            "session": session.session_id,
            "completed": sorted(session.results),
        }
        if any(s in f for f in flows for s in SECOND_FACTOR_STAGES):
            body["params"] = {TOTP: {"digits": 6, "period": 30}, RECOVERY_CODE: {}}
        if errcode:
            body["errcode"] = errcode
            body["error"] = error or "Authentication failed"
        elif PASSWORD in session.results and TOTP in {s for f in flows for s in f}:
            # A client that cannot do the stage still gets told what is missing.
            body["error"] = (f"Two-factor authentication required: complete the '{TOTP}' "
                             f"(or '{RECOVERY_CODE}') stage with a 'code'")
        return InteractiveAuthRequired(body)

    async def _run_stage(self, stage: str, auth: dict[str, Any], user_id: str | None) -> Any:
        if stage == DUMMY:
            return True
        if stage == PASSWORD:
            return await self._password_stage(auth, user_id)
        if stage in SECOND_FACTOR_STAGES:
            return await self._second_factor_stage(stage, auth, user_id)
        raise StageFailed(Codes.UNRECOGNIZED, "Unknown auth type")

    async def _password_stage(self, auth: dict[str, Any], user_id: str | None) -> str:
        password = auth.get("password")
        if not isinstance(password, str):
            raise StageFailed(Codes.MISSING_PARAM, "Missing password")
        claimed: str | None = None
        identifier = auth.get("identifier")
        if isinstance(identifier, dict):
            claimed = self._resolve_identifier(identifier)
        elif isinstance(auth.get("user"), str):
            claimed = self._resolve_identifier({"type": "m.id.user", "user": auth["user"]})
        if user_id is not None and claimed is not None and claimed != user_id:
            # Someone holding this user's access token names another account (as
            # Synapse, 403 rather than another try): that account's password is not
            # checked, so this cannot be used to guess other users' passwords.
            await self._password_failed(user_id, "tried to authenticate as another user")
            raise MatrixError(403, "Invalid auth: you can only authenticate as yourself",
                              Codes.FORBIDDEN)
        target = user_id or claimed
        if target is None:
            await self._password_failed(None, "unknown user identifier")
            raise StageFailed(Codes.FORBIDDEN, "Invalid username or password")
        await self._limit_password(target)  # 429 before any Argon2 work
        if not await self._check_password(target, password):
            await self._password_failed(target, "invalid password")
            raise StageFailed(Codes.FORBIDDEN, "Invalid password")
        return target

    async def _second_factor_stage(self, stage: str, auth: dict[str, Any],
                                   user_id: str | None) -> bool:
        """``org.parley.totp`` / ``org.parley.recovery_code``: ``auth.code`` checked for
        the authenticated user (429 while locked out after wrong codes)."""
        if user_id is None or self.second_factor is None:
            raise StageFailed(Codes.UNRECOGNIZED, "Unknown auth type")
        code = auth.get("code")
        if not isinstance(code, str) or not code:
            raise StageFailed(Codes.MISSING_PARAM, "Missing parameter: code")
        if not await self.second_factor.verify(user_id, stage, code):
            raise StageFailed(Codes.FORBIDDEN, "Invalid or already used code")
        return True

    async def begin_login(self, user_id: str, login: dict[str, Any]) -> InteractiveAuthRequired:
        """The answer to an enrolled user's right password at /login: a 401 naming the
        second-factor stages, with a session remembering the password stage and the
        login's parameters (``login``) for :meth:`finish_login`."""
        sid = secrets.token_urlsafe(18)
        await self._store.create(sid, self._clock.time_msec(), LOGIN_URI, "POST", user_id)
        await self._store.mark_stage_complete(sid, PASSWORD, user_id)
        await self._store.set_server_value(sid, "login", login)
        session = await self._store.get(sid)
        assert session is not None
        return self._required(
            session, LOGIN_FLOWS, SECOND_FACTOR_REQUIRED,
            f"Two-factor authentication required: send POST /login with type '{TOTP}' "
            f"(or '{RECOVERY_CODE}'), this 'session' and the 'code'")

    async def finish_login(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The /login second step: check the code for the user whose password the
        session holds, spend the session (once, however many requests race), and
        return (user id, the login parameters of the first step)."""
        sid = body.get("session")
        if not isinstance(sid, str) or not sid:
            raise MatrixError(400, "Missing parameter: session", Codes.MISSING_PARAM)
        session = await self._store.get(sid)
        not_before = self._clock.time_msec() - LOGIN_SESSION_LIFETIME_MS
        if (session is None or session.created_ts < not_before or session.uri != LOGIN_URI
                or session.user_id is None or PASSWORD not in session.results):
            raise unknown_session()
        try:
            await self._second_factor_stage(body["type"], body, session.user_id)
        except StageFailed as e:
            raise self._required(session, LOGIN_FLOWS, e.errcode, e.msg) from e
        await self.consume(sid)
        login = session.serverdict.get("login")
        return session.user_id, login if isinstance(login, dict) else {}

    async def _password_failed(self, user_id: str | None, reason: str) -> None:
        for hook in self.on_password_failure:
            await hook(user_id, reason)

    async def _registration_token_stage(self, session_id: str, auth: dict[str, Any]) -> None:
        token = auth.get("token")
        if not isinstance(token, str) or not token:
            raise StageFailed(Codes.MISSING_PARAM, "Missing registration token")
        if not await self._store.complete_token_stage(session_id, token,
                                                      self._clock.time_msec()):
            raise StageFailed(Codes.UNAUTHORIZED, "Invalid registration token")


def unknown_session() -> MatrixError:
    """What a missing, expired or already spent UIA session gets (as Synapse)."""
    return MatrixError(400, "Unknown session ID", Codes.UNKNOWN)
