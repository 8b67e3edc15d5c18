"""POST /register, GET /register/available, registration-token validity."""

from __future__ import annotations

import logging
from typing import Any

from homeserver import identifiers
from homeserver.appservice.auth import request_token
from homeserver.auth.ratelimit import AuthRateLimiters
from homeserver.auth.ui_auth import (
    DUMMY,
    REGISTRATION_TOKEN,
    UserInteractiveAuth,
    unknown_session,
)
from homeserver.clock import Clock
from homeserver.config.model import RegistrationConfig
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.registration import RegistrationHandler, guest_credentials_required
from homeserver.handlers.sessions import SessionHandler
from homeserver.http.errors import Codes, InteractiveAuthRequired, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from storage.stores.registration_tokens import RegistrationTokenStore
from storage.stores.ui_auth import UiAuthSession

REGISTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "auth": {"type": "object"},
        "username": {"type": "string", "maxLength": 1024},
        "password": {"type": "string", "maxLength": 512},
        "device_id": {"type": "string", "minLength": 1, "maxLength": 255},
        "initial_device_display_name": {"type": "string", "maxLength": 255},
        "inhibit_login": {"type": "boolean"},
        "refresh_token": {"type": "boolean"},
        "guest_access_token": {"type": "string", "maxLength": 4096},
    },
}

logger = logging.getLogger(__name__)

# What a UIA session remembers between registration requests (Synapse's clientdict).
# The password is not among them: only its hash is kept, under PASSWORD_HASH_KEY.
REMEMBERED_PARAMS = ("username", "device_id", "initial_device_display_name", "inhibit_login",
                     "refresh_token")
PARAMS_KEY = "register_params"
APPSERVICE_LOGIN_TYPE = "m.login.application_service"
PASSWORD_HASH_KEY = "password_hash"


def _params(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in REMEMBERED_PARAMS if k in body}


class RegisterServlets:
    def __init__(
        self,
        config: RegistrationConfig,
        registration: RegistrationHandler,
        uia: UserInteractiveAuth,
        devices: DeviceHandler,
        reg_tokens: RegistrationTokenStore,
        clock: Clock,
        limits: AuthRateLimiters,
        sessions: SessionHandler,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._limits = limits
        self._config = config
        self._registration = registration
        self._uia = uia
        self._devices = devices
        self._reg_tokens = reg_tokens

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/register"), self.on_register, auth="none",
                   body_schema=REGISTER_SCHEMA)
        router.add("GET", client_paths("/register/available"), self.on_available, auth="none")
        router.add(
            "GET",
            client_paths("/register/m.login.registration_token/validity", versions=["v1"]),
            self.on_token_validity, auth="none",
        )

    def _flows(self) -> list[list[str]]:
        return [[REGISTRATION_TOKEN]] if self._config.requires_token else [[DUMMY]]

    async def on_available(self, req: ApiRequest) -> tuple[int, Any]:
        if not self._config.enabled:
            raise MatrixError(403, "Registration has been disabled", Codes.FORBIDDEN)
        username = req.query("username")
        if not username:
            raise MatrixError(400, "Missing parameter: username", Codes.MISSING_PARAM)
        await self._registration.check_username_available(username)
        return 200, {"available": True}

    async def on_token_validity(self, req: ApiRequest) -> tuple[int, Any]:
        # Limited per IP (registration class, rate_classes.py): else a token oracle.
        if not self._config.enabled:
            raise MatrixError(403, "Registration has been disabled", Codes.FORBIDDEN)
        token = req.query("token")
        if not token:
            raise MatrixError(400, "Missing parameter: token", Codes.MISSING_PARAM)
        found = await self._reg_tokens.get(token)
        valid = found is not None and found.usable(self._clock.time_msec())
        return 200, {"valid": valid}

    async def on_register(self, req: ApiRequest) -> tuple[int, Any]:
        body: dict[str, Any] = req.body
        kind = req.query("kind", "user")
        if kind not in ("user", "guest"):
            raise MatrixError(400, "Invalid kind", Codes.INVALID_PARAM)
        if kind == "guest":
            return await self._register_guest(req)
        appservice = await self._appservice_registration(req)
        if appservice is not None:
            return 200, appservice
        if not self._config.enabled:
            raise MatrixError(403, "Registration has been disabled", Codes.FORBIDDEN)

        uri = req.raw.path.decode()
        password = body.get("password")
        auth = body.get("auth")
        sid = auth.get("session") if isinstance(auth, dict) else None
        session: UiAuthSession | None = None
        if isinstance(sid, str):
            replay = await self._replay(req, sid, _params(body), password)
            if replay is not None:
                return 200, replay
            session = await self._uia.live_session(sid, uri, "POST")
        # As Synapse: a request carrying parameters replaces those the session
        # remembers; one carrying none (only "auth") uses the remembered ones.
        params = _params(body)
        if not params and session is not None:
            params = dict(session.serverdict.get(PARAMS_KEY) or {})
        username = params.get("username")
        if username is not None:
            username = params["username"] = username.lower()  # as Synapse
        # A guest becoming a full user (as Synapse): the request carries the guest's
        # access token (never remembered with the session) and names that guest.
        guest_token = body.get("guest_access_token")
        upgrading = None
        if guest_token is not None:
            upgrading = await self._guest_to_upgrade(guest_token, username)
            username = params["username"] = identifiers.split_user_id(upgrading)[0]
        elif username is not None:
            await self._registration.check_username_available(username)
        if password is not None:
            self._registration.check_password_policy(password)

        try:
            results, uia_session = await self._uia.check(body, self._flows(), uri, "POST")
        except InteractiveAuthRequired as e:
            # Argon2 work for a request not yet past any gate only where registration
            # is open anyway (the dummy flow): a token-gated server hashes nothing for
            # a client that has not completed the token stage.
            may_hash = self._flows() == [[DUMMY]] or bool(e.body.get("completed"))
            await self._remember(e.body["session"], session, params,
                                 password if may_hash else None)
            raise
        session = await self._uia.live_session(uia_session, uri, "POST")
        if session is None:  # spent by a concurrent request meanwhile
            raise unknown_session()
        password_hash = None
        if password is None:
            password_hash = session.serverdict.get(PASSWORD_HASH_KEY)
            if not isinstance(password_hash, str):
                raise MatrixError(400, "Missing parameter: password", Codes.MISSING_PARAM)
        # The UIA session and the registration-token use are spent in the transaction
        # that creates the account (which records the account with the session): one
        # session, one account, however many requests race or re-send it.
        spend = self._uia.registration_consumer(session, results)
        await self._registration.check_registration(username, req.client.ip,
                                                    req.client.user_agent)
        try:
            if upgrading is not None:
                await self._registration.upgrade_guest(upgrading, password, password_hash,
                                                       spend=spend)
                user_id = upgrading
            else:
                user_id = await self._registration.create_account(
                    username, password, password_hash=password_hash, spend=spend)
        except MatrixError as e:
            if e.errcode != Codes.UNKNOWN:
                raise
            # Spent meanwhile, perhaps by this same request sent twice.
            replay = await self._replay(req, session.session_id, params, password)
            if replay is None:
                raise
            return 200, replay
        token = results.get(REGISTRATION_TOKEN)
        await self._registration.record_registration(
            "success", user_id, details={"registration_token": isinstance(token, str),
                                         "guest_upgrade": upgrading is not None})
        return 200, await self._login_response(req, user_id, params)

    async def _appservice_registration(self, req: ApiRequest) -> dict[str, Any] | None:
        """``m.login.application_service`` (homeserver/appservice/): an application
        service registers a user of its namespace with its ``as_token``, no UIA, even
        when registration is closed. None when the request is not one."""
        appservices = self._registration.appservices
        body: dict[str, Any] = req.body
        is_as_type = body.get("type") == APPSERVICE_LOGIN_TYPE
        svc = appservices.tokens.find(request_token(req.raw)) \
            if appservices is not None else None
        if svc is None:
            if is_as_type:
                raise MatrixError(401, "An application service token is required for "
                                  "m.login.application_service", Codes.MISSING_TOKEN)
            return None
        username = body.get("username", body.get("user"))
        if not isinstance(username, str) or not username or len(username) > 255:
            raise MatrixError(400, "Missing parameter: username", Codes.MISSING_PARAM)
        user_id = await appservices.register_user(svc, username)
        await self._registration.record_registration("success", user_id,
                                                     details={"appservice": svc.id})
        return await self._login_response(req, user_id, _params(body))

    async def _guest_to_upgrade(self, guest_token: str, username: str | None) -> str:
        """The guest a ``guest_access_token`` proves the caller is; it must be the user
        ``username`` names (default: that guest). 403 otherwise."""
        claims = await self._sessions.verify_access_token(guest_token)
        if claims is None or not claims.is_guest:
            raise guest_credentials_required()
        if username is not None and claims.user_id != identifiers.user_id(
                username, self._registration.server_name):
            raise guest_credentials_required()
        return claims.user_id

    async def _remember(
        self, session_id: str, session: UiAuthSession | None, params: dict[str, Any],
        password: str | None,
    ) -> None:
        """Keep this request's parameters with its UIA session, so the request that
        completes the session need not repeat them (Synapse does the same). The
        password is kept only as its hash, computed once per session."""
        stored = session.serverdict if session is not None else {}
        if params and params != stored.get(PARAMS_KEY):
            await self._uia.set_session_value(session_id, PARAMS_KEY, params)
        if password is not None and not isinstance(stored.get(PASSWORD_HASH_KEY), str):
            try:
                password_hash = await self._registration.hash_password(password)
            except MatrixError as e:
                if e.errcode != Codes.LIMIT_EXCEEDED:
                    raise
                # Hashing is saturated: the 401 still goes out (no request is refused
                # for load before UIA); the password must then come with completion.
                logger.info("registration password not remembered: hashing saturated")
                return
            await self._uia.set_session_value(session_id, PASSWORD_HASH_KEY, password_hash)

    async def _replay(
        self, req: ApiRequest, session_id: str, params: dict[str, Any], password: str | None
    ) -> dict[str, Any] | None:
        """Answer a completed registration sent again with its spent session: the same
        account, never a second one (Synapse: "registration is idempotent"). None when
        the session registered nothing, or the request names another username.

        Unlike Synapse, new tokens are minted only for a request carrying the account's
        password (checked as the UIA password stage, rate-limited): the session id alone
        does not log anyone in to the account after it was created.
        """
        user_id = await self._uia.registered_user(session_id)
        if user_id is None:
            return None
        username = params.get("username")
        if isinstance(username, str) and user_id != identifiers.user_id(
                username.lower(), self._registration.server_name):
            return None
        if not params.get("inhibit_login"):
            if password is None:
                raise MatrixError(400, "This registration session has already been used: "
                                  "send the password again, or log in", Codes.UNKNOWN)
            if not await self._uia.check_password(user_id, password):
                raise MatrixError(403, "Invalid password", Codes.FORBIDDEN)
        await self._registration.record_registration("replay", user_id)
        return await self._login_response(req, user_id, params)

    async def _register_guest(self, req: ApiRequest) -> tuple[int, Any]:
        # Guests only where the operator turned them on (registration.allow_guests, off by
        # default), whatever registration.enabled / requires_token say: a guest account is
        # limited by its stored is_guest flag, which every token minted for it carries.
        if not self._config.allow_guests:
            raise MatrixError(403, "Guest access is disabled", Codes.FORBIDDEN)
        await self._registration.check_registration(None, req.client.ip, req.client.user_agent,
                                                    is_guest=True)
        user_id = await self._registration.create_account(None, None, is_guest=True)
        await self._registration.record_registration("success", user_id,
                                                     details={"guest": True})
        return 200, await self._login_response(req, user_id, req.body)

    async def _login_response(
        self, req: ApiRequest, user_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"user_id": user_id, "home_server": self._registration.server_name}
        if body.get("inhibit_login"):
            return out
        device_id, tokens = await self._devices.login_device(
            user_id, body.get("device_id"), body.get("initial_device_display_name"),
            bool(body.get("refresh_token")), req.client, via="register",
        )
        out["device_id"] = device_id
        out.update(tokens.to_json())
        return out
