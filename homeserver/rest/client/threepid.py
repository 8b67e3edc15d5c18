"""Third-party identifier (email / phone) endpoints.

Parley stores no 3PIDs, sends no email or SMS and talks to no identity server
(privacy by design; ``m.3pid_changes`` is advertised as disabled). The endpoints
still exist so clients get the answers Synapse gives when email/SMS and identity
servers are not configured, instead of 404s:

* listing 3PIDs: always empty;
* ``requestToken`` (register, add to account, password reset; email and msisdn):
  400 after validating the body, ``M_THREEPID_MEDIUM_NOT_SUPPORTED`` for adding to
  the account (spec), ``M_UNKNOWN`` otherwise (Synapse). Like in the spec and in
  Synapse they need no access token: password reset is for users who cannot log in;
* adding a 3PID (``/3pid/add`` and the deprecated ``POST /3pid``): 400
  ``M_THREEPID_AUTH_FAILED``, since no validation session can exist; user-interactive
  auth is not started first, because the request can never succeed and a password
  prompt would only add a password-guessing surface;
* binding through an identity server: proxied to it when it is listed in
  ``identity_servers.trusted`` (homeserver/handlers/identity.py), else 400
  ``M_SERVER_NOT_TRUSTED`` and nothing is contacted, so a client cannot make Parley
  fetch a URL of its choosing;
* unbind / delete: unbinds from the given trusted identity server, or from those the
  3PID was bound to through us; ``success`` when they all did, else ``no-support``
  (nothing else is stored to delete).
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.identity import IdentityHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import MAX_SAFE_INTEGER, json_int
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

# Spec: "[0-9a-zA-Z.=_-]", at most 255 characters, not empty (client_secret and sid).
OPAQUE_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255,
                             "pattern": "^[0-9a-zA-Z.=_-]+\\Z"}
_STRING: dict[str, Any] = {"type": "string"}
_IDENTITY_SERVER_PROPS: dict[str, Any] = {"id_server": _STRING, "id_access_token": _STRING}
_BOUNDED: dict[str, Any] = {"type": "string", "maxLength": 512}

# definitions/request_email_validation.yaml
EMAIL_REQUEST_TOKEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["client_secret", "email", "send_attempt"],
    "properties": {
        "client_secret": OPAQUE_ID,
        "email": _STRING,
        "send_attempt": json_int(minimum=-MAX_SAFE_INTEGER),
        "next_link": _STRING,
        **_IDENTITY_SERVER_PROPS,
    },
}
# definitions/request_msisdn_validation.yaml
MSISDN_REQUEST_TOKEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["client_secret", "country", "phone_number", "send_attempt"],
    "properties": {
        "client_secret": OPAQUE_ID,
        "country": _STRING,
        "phone_number": _STRING,
        "send_attempt": json_int(minimum=-MAX_SAFE_INTEGER),
        "next_link": _STRING,
        **_IDENTITY_SERVER_PROPS,
    },
}
ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["client_secret", "sid"],
    "properties": {"auth": {"type": "object"}, "client_secret": OPAQUE_ID, "sid": _STRING},
}
# The deprecated POST /account/3pid. Like Synapse, only client_secret and sid are
# required inside three_pid_creds (the identity server fields are unused anyway).
LEGACY_ADD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["three_pid_creds"],
    "properties": {
        "three_pid_creds": {
            "type": "object",
            "required": ["client_secret", "sid"],
            "properties": {"client_secret": OPAQUE_ID, "sid": _STRING, **_IDENTITY_SERVER_PROPS},
        },
    },
}
BIND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["client_secret", "id_server", "id_access_token", "sid"],
    "properties": {"client_secret": OPAQUE_ID, "sid": _BOUNDED, "id_server": _BOUNDED,
                   "id_access_token": _BOUNDED},
}
REMOVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["medium", "address"],
    "properties": {
        "medium": {"type": "string", "enum": ["email", "msisdn"]},
        "address": _BOUNDED,
        "id_server": _BOUNDED,
    },
}

# (path, schema, errcode, message) for every requestToken endpoint.
_REQUEST_TOKEN_ROUTES: list[tuple[str, dict[str, Any], str, str]] = [
    ("/register/email/requestToken", EMAIL_REQUEST_TOKEN_SCHEMA, Codes.UNKNOWN,
     "Email-based registration is not supported on this server"),
    ("/register/msisdn/requestToken", MSISDN_REQUEST_TOKEN_SCHEMA, Codes.UNKNOWN,
     "Registration by phone number is not supported on this server"),
    ("/account/3pid/email/requestToken", EMAIL_REQUEST_TOKEN_SCHEMA,
     Codes.THREEPID_MEDIUM_NOT_SUPPORTED,
     "Adding an email address to your account is not supported on this server"),
    ("/account/3pid/msisdn/requestToken", MSISDN_REQUEST_TOKEN_SCHEMA,
     Codes.THREEPID_MEDIUM_NOT_SUPPORTED,
     "Adding a phone number to your account is not supported on this server"),
    ("/account/password/email/requestToken", EMAIL_REQUEST_TOKEN_SCHEMA, Codes.UNKNOWN,
     "Email-based password resets are not supported on this server"),
    ("/account/password/msisdn/requestToken", MSISDN_REQUEST_TOKEN_SCHEMA, Codes.UNKNOWN,
     "Phone-based password resets are not supported on this server"),
]

_NO_SESSION = "No validated 3PID session found"
_BIND_VERSIONS = ("r0", "v3", "unstable")
_NO_UNBIND = {"id_server_unbind_result": "no-support"}


def _refuse(errcode: str, msg: str) -> Any:
    """A servlet that answers every (already validated) request with one 400."""

    async def handler(req: ApiRequest) -> tuple[int, Any]:
        raise MatrixError(400, msg, errcode)

    return handler


class ThreepidServlets:
    def __init__(self, identity: IdentityHandler | None = None) -> None:
        self._identity = identity

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/account/3pid"), self.on_list)
        router.add("POST", client_paths("/account/3pid"), self.on_add,
                   body_schema=LEGACY_ADD_SCHEMA)
        router.add("POST", client_paths("/account/3pid/add"), self.on_add,
                   body_schema=ADD_SCHEMA)
        # SyTest (and old clients) use the unstable prefix for bind and unbind.
        router.add("POST", client_paths("/account/3pid/bind", _BIND_VERSIONS), self.on_bind,
                   body_schema=BIND_SCHEMA)
        router.add("POST", client_paths("/account/3pid/unbind", _BIND_VERSIONS),
                   self.on_remove, body_schema=REMOVE_SCHEMA)
        router.add("POST", client_paths("/account/3pid/delete"), self.on_remove,
                   body_schema=REMOVE_SCHEMA)
        for path, schema, errcode, msg in _REQUEST_TOKEN_ROUTES:
            router.add("POST", client_paths(path), _refuse(errcode, msg), auth="none",
                       body_schema=schema)

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        req.require_requester()
        return 200, {"threepids": []}

    async def on_add(self, req: ApiRequest) -> tuple[int, Any]:
        req.require_requester()
        raise MatrixError(400, _NO_SESSION, Codes.THREEPID_AUTH_FAILED)

    async def on_bind(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if self._identity is None:
            raise MatrixError(400, "This server does not use identity servers",
                              Codes.SERVER_NOT_TRUSTED)
        body = req.body
        await self._identity.bind(r.user_id, body["id_server"], body["id_access_token"],
                                  body["sid"], body["client_secret"])
        return 200, {}

    async def on_remove(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        if self._identity is None:
            return 200, dict(_NO_UNBIND)
        body = req.body
        result = await self._identity.unbind(r.user_id, body["medium"], body["address"],
                                             body.get("id_server"))
        return 200, {"id_server_unbind_result": result}
