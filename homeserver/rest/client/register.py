"""POST /register, GET /register/available, registration-token validity."""

from __future__ import annotations

from typing import Any

from homeserver.auth.ratelimit import AuthRateLimiters
from homeserver.auth.ui_auth import DUMMY, REGISTRATION_TOKEN, UserInteractiveAuth
from homeserver.clock import Clock
from homeserver.config.model import RegistrationConfig
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.registration import RegistrationHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from storage.stores.registration_tokens import RegistrationTokenStore

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
    },
}


class RegisterServlets:
    def __init__(
        self,
        config: RegistrationConfig,
        registration: RegistrationHandler,
        uia: UserInteractiveAuth,
        devices: DeviceHandler,
        events: SecurityEventRecorder,
        reg_tokens: RegistrationTokenStore,
        clock: Clock,
        limits: AuthRateLimiters,
    ) -> None:
        self._clock = clock
        self._limits = limits
        self._config = config
        self._registration = registration
        self._uia = uia
        self._devices = devices
        self._events = events
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
        self._limits.registration.check(req.client.ip)
        if not self._config.enabled:
            raise MatrixError(403, "Registration has been disabled", Codes.FORBIDDEN)
        username = req.query("username")
        if not username:
            raise MatrixError(400, "Missing parameter: username", Codes.MISSING_PARAM)
        await self._registration.check_username_available(username)
        return 200, {"available": True}

    async def on_token_validity(self, req: ApiRequest) -> tuple[int, Any]:
        # Limited: otherwise an oracle for guessing registration tokens.
        self._limits.registration.check(req.client.ip)
        if not self._config.enabled:
            raise MatrixError(403, "Registration has been disabled", Codes.FORBIDDEN)
        token = req.query("token")
        if not token:
            raise MatrixError(400, "Missing parameter: token", Codes.MISSING_PARAM)
        found = await self._reg_tokens.get(token)
        valid = found is not None and found.usable(self._clock.time_msec())
        return 200, {"valid": valid}

    async def on_register(self, req: ApiRequest) -> tuple[int, Any]:
        self._limits.registration.check(req.client.ip)  # guests included, as Synapse
        body: dict[str, Any] = req.body
        kind = req.query("kind", "user")
        if kind not in ("user", "guest"):
            raise MatrixError(400, "Invalid kind", Codes.INVALID_PARAM)
        if kind == "guest":
            return await self._register_guest(req)
        if not self._config.enabled:
            raise MatrixError(403, "Registration has been disabled", Codes.FORBIDDEN)

        username = body.get("username")
        password = body.get("password")
        if username is not None:
            await self._registration.check_username_available(username)
        if password is not None:
            self._registration.check_password_policy(password)

        results, uia_session = await self._uia.check(body, self._flows(), req.raw.path.decode(),
                                                     "POST")
        if password is None:
            raise MatrixError(400, "Missing parameter: password", Codes.MISSING_PARAM)
        # The UIA session and the registration-token use are spent in the transaction
        # that creates the account: one session, one account, however many requests race.
        user_id = await self._registration.create_account(
            username, password, consume=self._uia.consumer(uia_session, results))
        token = results.get(REGISTRATION_TOKEN)
        await self._events.record("register", "success", req.client, user_id=user_id,
                                  details={"registration_token": isinstance(token, str)})
        return 200, await self._login_response(req, user_id, body)

    async def _register_guest(self, req: ApiRequest) -> tuple[int, Any]:
        # Guests only where the operator turned them on (registration.allow_guests, off by
        # default), whatever registration.enabled / requires_token say: a guest account is
        # limited by its stored is_guest flag, which every token minted for it carries.
        if not self._config.allow_guests:
            raise MatrixError(403, "Guest access is disabled", Codes.FORBIDDEN)
        user_id = await self._registration.create_account(None, None, is_guest=True)
        await self._events.record("register", "success", req.client, user_id=user_id,
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
