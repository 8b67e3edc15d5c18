"""GET/POST /login, POST /refresh, POST /logout, POST /logout/all, GET /account/whoami."""

from __future__ import annotations

from typing import Any

from homeserver.auth.password_auth import PasswordAuth, PasswordCheck
from homeserver.auth.ratelimit import AuthRateLimiters
from homeserver.auth.ui_auth import PASSWORD, SECOND_FACTOR_STAGES, SecondFactor, UserInteractiveAuth
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.login_tokens import LOGIN_TOKEN_TYPE, MAX_TOKEN_LENGTH, LoginTokenHandler
from homeserver.handlers.sessions import SessionHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

LOGIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string"},
        "identifier": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string"}, "user": {"type": "string"}},
        },
        "user": {"type": "string"},
        "password": {"type": "string", "maxLength": 512},
        "device_id": {"type": "string", "minLength": 1, "maxLength": 255},
        "initial_device_display_name": {"type": "string", "maxLength": 255},
        "refresh_token": {"type": "boolean"},
        # The second step of an MFA login (type org.parley.totp / org.parley.recovery_code).
        "session": {"type": "string", "minLength": 1, "maxLength": 255},
        "code": {"type": "string", "maxLength": 64},
        "token": {"type": "string", "maxLength": MAX_TOKEN_LENGTH},  # m.login.token
    },
}
# POST /login/get_token: only UIA's ``auth``.
GET_TOKEN_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"auth": {"type": "object"}}}
# What the first step of an MFA login remembers for the second.
_LOGIN_PARAMS = ("device_id", "initial_device_display_name", "refresh_token")
REFRESH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["refresh_token"],
    "properties": {"refresh_token": {"type": "string", "maxLength": 512}},
}
EMPTY_SCHEMA: dict[str, Any] = {"type": "object"}


class LoginServlets:
    def __init__(
        self,
        server_name: str,
        password_auth: PasswordAuth,
        devices: DeviceHandler,
        sessions: SessionHandler,
        limits: AuthRateLimiters,
        uia: UserInteractiveAuth | None = None,
        mfa: SecondFactor | None = None,
        login_tokens: LoginTokenHandler | None = None,
    ) -> None:
        # m.login.token and /login/get_token: None or disabled, neither is offered.
        self._login_tokens = login_tokens if login_tokens and login_tokens.enabled else None
        self._limits = limits
        self._uia = uia
        self._mfa = mfa
        self._server_name = server_name
        self._password_auth = password_auth
        self._devices = devices
        self._sessions = sessions

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/login"), self.on_get_login, auth="none")
        router.add("POST", client_paths("/login"), self.on_login, auth="none",
                   body_schema=LOGIN_SCHEMA)
        router.add("POST", client_paths("/refresh", versions=["v1", "v3"]), self.on_refresh,
                   auth="none", body_schema=REFRESH_SCHEMA)
        router.add("POST", client_paths("/logout"), self.on_logout, json_body=False,
                   allow_guest=True)
        router.add("POST", client_paths("/logout/all"), self.on_logout_all, json_body=False,
                   allow_guest=True)
        router.add("GET", client_paths("/account/whoami"), self.on_whoami, allow_guest=True)
        if self._login_tokens is not None:  # unrouted when off (404 M_UNRECOGNIZED), as Synapse
            router.add("POST", client_paths("/login/get_token", versions=["v1"]),
                       self.on_get_token, body_schema=GET_TOKEN_SCHEMA)

    async def on_get_login(self, req: ApiRequest) -> tuple[int, Any]:
        flows: list[dict[str, Any]] = [{"type": "m.login.password"},
                                       *({"type": t} for t in self._password_auth.login_types())]
        if self._login_tokens is not None:
            flows.append({"type": LOGIN_TOKEN_TYPE, "get_login_token": True})
        return 200, {"flows": flows}

    async def on_login(self, req: ApiRequest) -> tuple[int, Any]:
        body: dict[str, Any] = req.body
        if body["type"] in SECOND_FACTOR_STAGES and self._uia is not None:
            user_id, first = await self._uia.finish_login(body)
            return await self._logged_in(req, user_id, {**first, **{
                k: body[k] for k in _LOGIN_PARAMS if k in body}}, via=body["type"])
        if body["type"] == LOGIN_TOKEN_TYPE and self._login_tokens is not None:
            return await self._token_login(req, body)
        if body["type"] in self._password_auth.login_types():
            return await self._provider_login(req, body)
        if body["type"] != PASSWORD:
            raise MatrixError(400, "Unknown login type", Codes.UNKNOWN)
        identifier = body.get("identifier")
        if identifier is None and isinstance(body.get("user"), str):
            identifier = {"type": "m.id.user", "user": body["user"]}
        if identifier is None:
            raise MatrixError(400, "Missing parameter: identifier", Codes.MISSING_PARAM)
        if identifier["type"] != "m.id.user":
            raise MatrixError(400, "Unknown login identifier type", Codes.UNKNOWN)
        if not isinstance(identifier.get("user"), str):
            raise MatrixError(400, "Missing parameter: identifier.user", Codes.MISSING_PARAM)
        password = body.get("password")
        if not isinstance(password, str):
            raise MatrixError(400, "Missing parameter: password", Codes.MISSING_PARAM)

        user_id = self._password_auth.resolve_identifier(identifier)
        # The password is checked first, at the same Argon2 cost whether or not the
        # account exists: only the right password learns that an account is deactivated.
        check = await self._password_auth.verify(user_id, password)
        if check is PasswordCheck.DEACTIVATED:
            await self._sessions.login_refused(user_id, "deactivated")
            raise MatrixError(403, "This account has been deactivated", Codes.USER_DEACTIVATED)
        if check is not PasswordCheck.OK or user_id is None:
            await self._sessions.login_refused(user_id, check.value)
            raise MatrixError(403, "Invalid username or password", Codes.FORBIDDEN)
        if (self._mfa is not None and self._uia is not None
                and await self._mfa.is_enrolled(user_id)):
            # The password was right; the session says so to the second step.
            await self._sessions.login_pending(user_id)
            raise await self._uia.begin_login(
                user_id, {k: body[k] for k in _LOGIN_PARAMS if k in body})
        return await self._logged_in(req, user_id, body)

    async def _provider_login(self, req: ApiRequest, body: dict[str, Any]) -> tuple[int, Any]:
        """A login type a plugin offers (plugins' ``auth_provider_login``); an account
        enrolled in MFA still needs its second factor."""
        user_id, check = await self._password_auth.login_with_provider(body["type"], body)
        if check is not PasswordCheck.OK or user_id is None:
            await self._sessions.login_refused(user_id, check.value)
            if check is PasswordCheck.DEACTIVATED:
                raise MatrixError(403, "This account has been deactivated",
                                  Codes.USER_DEACTIVATED)
            raise MatrixError(403, "Invalid login", Codes.FORBIDDEN)
        if (self._mfa is not None and self._uia is not None
                and await self._mfa.is_enrolled(user_id)):
            raise await self._uia.begin_login(
                user_id, {k: body[k] for k in _LOGIN_PARAMS if k in body})
        return await self._logged_in(req, user_id, body, via=body["type"])

    async def _token_login(self, req: ApiRequest, body: dict[str, Any]) -> tuple[int, Any]:
        """``m.login.token``: a token from /login/get_token, spent once. No second
        factor: the issuing session passed UIA (with MFA) to get it."""
        assert self._login_tokens is not None
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise MatrixError(400, "Missing parameter: token", Codes.MISSING_PARAM)
        user_id, device_id, tokens = await self._login_tokens.login(token, body, req.client)
        out: dict[str, Any] = {"user_id": user_id, "device_id": device_id,
                               "home_server": self._server_name}
        out.update(tokens.to_json())
        return 200, out

    async def on_get_token(self, req: ApiRequest) -> tuple[int, Any]:
        """POST /login/get_token: always behind a fresh UIA (the spec: re-prompt for
        every token), with the second factor for an enrolled user."""
        assert self._login_tokens is not None and self._uia is not None
        r = req.require_requester()
        _, session = await self._uia.check(req.body, [[PASSWORD]], req.raw.path.decode(),
                                           "POST", user_id=r.user_id)
        await self._uia.consume(session)  # one completed session, one token
        issued = await self._login_tokens.issue(r.user_id, r.device_id, r.session_id,
                                                req.client)
        return 200, issued.to_json()

    async def _logged_in(self, req: ApiRequest, user_id: str, params: dict[str, Any],
                         via: str | None = None) -> tuple[int, Any]:
        device_id, tokens = await self._devices.login_device(
            user_id, params.get("device_id"), params.get("initial_device_display_name"),
            bool(params.get("refresh_token")), req.client, via=via,
        )
        out: dict[str, Any] = {"user_id": user_id, "device_id": device_id,
                               "home_server": self._server_name}
        out.update(tokens.to_json())
        return 200, out

    async def on_refresh(self, req: ApiRequest) -> tuple[int, Any]:
        tokens = await self._sessions.refresh(req.body["refresh_token"], req.client)
        return 200, tokens.to_json()

    async def on_logout(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if r.device_id:
            await self._devices.delete_devices(r.user_id, [r.device_id], req.client, "logout")
        await self._sessions.revoke_session(r.session_id, "logout")
        await self._sessions.logged_out("logout", r.user_id, r.device_id, r.session_id)
        return 200, {}

    async def on_logout_all(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        await self._devices.delete_all_devices(r.user_id, req.client, "logout_all", None)
        await self._sessions.revoke_user(r.user_id, "logout_all")
        await self._sessions.logged_out("logout_all", r.user_id, r.device_id, r.session_id)
        return 200, {}

    async def on_whoami(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        out: dict[str, Any] = {"user_id": r.user_id, "is_guest": r.is_guest}
        if r.device_id:
            out["device_id"] = r.device_id
        return 200, out
