"""GET /profile/{userId} and GET/PUT/DELETE /profile/{userId}/{keyName} (spec v1.16).

Reads need no access token (the spec makes auth optional; Synapse's default too).
``displayname``, ``avatar_url`` and ``m.tz`` have fixed value rules (declared below);
any other key takes any JSON value but null. The r0 paths only ever knew GET and PUT
of displayname and avatar_url, so only those are served there (as Synapse).
"""

from __future__ import annotations

import functools
from typing import Any

from jsonschema import Draft202012Validator

from homeserver.handlers.profile import (
    AVATAR_URL,
    DISPLAYNAME,
    MAX_AVATAR_URL_LENGTH,
    MAX_DISPLAYNAME_LENGTH,
    TIMEZONE,
    ProfileHandler,
    check_key_name,
)
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest, describe_validation_error
from storage.stores.profiles import encode_value

# Patterns end in \Z, not $: jsonschema uses Python's re.search, where $ also matches
# before a final newline ("mxc://a/b\n" would pass).
# No NUL (PostgreSQL TEXT cannot hold it) and no lone surrogates (not encodable as UTF-8).
_STORABLE_TEXT = r"^[^\x00\ud800-\udfff]*\Z"
# "" clears the avatar; otherwise an MXC URI: mxc://<server name>/<media id> (spec grammar).
_MXC_OR_EMPTY = r"^(mxc://[A-Za-z0-9.:\[\]-]+/[A-Za-z0-9_-]+)?\Z"
# The spec leaves m.tz validation to the server and tells clients to expect junk. We
# check only the shape of an IANA name ("Europe/London", "Etc/GMT+5", "EST5EDT"), not
# that it exists: tz databases differ between hosts and grow, and a shape check already
# keeps markup and control characters out of what clients render.
_IANA_TZ = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*\Z"
MAX_TZ_LENGTH = 255

# Value rules of the keys the spec defines; the body must be exactly {key: value}.
VALUE_SCHEMAS: dict[str, dict[str, Any]] = {
    DISPLAYNAME: {"type": "string", "maxLength": MAX_DISPLAYNAME_LENGTH, "pattern": _STORABLE_TEXT},
    AVATAR_URL: {"type": "string", "maxLength": MAX_AVATAR_URL_LENGTH, "pattern": _MXC_OR_EMPTY},
    TIMEZONE: {"type": "string", "minLength": 1, "maxLength": MAX_TZ_LENGTH, "pattern": _IANA_TZ},
}


def _body_schema(key: str, value_schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [key], "additionalProperties": False,
            "properties": {key: value_schema}}


_VALIDATORS = {key: Draft202012Validator(_body_schema(key, schema))
               for key, schema in VALUE_SCHEMAS.items()}


def field_value(key: str, body: dict[str, Any]) -> Any:
    """The value a PUT body sets: the body must be ``{key: value}`` and nothing else
    (spec: "exactly one property"). Missing key: ``M_MISSING_PARAM``; other keys or a
    wrong type: ``M_BAD_JSON``; a value breaking the key's rules: ``M_INVALID_PARAM``."""
    validator = _VALIDATORS.get(key)
    if validator is not None:
        errors = sorted(validator.iter_errors(body),
                        key=lambda e: (len(e.absolute_path), e.validator != "required"))
        if errors:
            raise describe_validation_error(errors[0])
        return body[key]
    if key not in body:
        raise MatrixError(400, f"Missing parameter: {key}", Codes.MISSING_PARAM)
    if len(body) != 1:
        raise MatrixError(400, "Unexpected field in 'body'", Codes.BAD_JSON)
    value = body[key]
    if value is None:
        # The spec lets servers refuse null; Synapse does, so clients cannot come to rely
        # on it meaning "delete" (that is what DELETE is for).
        raise MatrixError(400, f"'{key}' cannot be null; use DELETE to remove it",
                          Codes.INVALID_PARAM)
    try:
        encode_value(value)
    except ValueError as e:  # 1e400 parses as infinity, which JSON cannot carry
        raise MatrixError(400, f"Invalid number in '{key}'", Codes.BAD_JSON) from e
    return value


class ProfileServlets:
    def __init__(self, profiles: ProfileHandler) -> None:
        self._profiles = profiles

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/profile/{userId}"), self.on_get_profile,
                   auth="optional", allow_guest=True)
        # Guests pass the router; the handler lets them change only their display name.
        field_paths = client_paths("/profile/{userId}/{keyName}", ("v3",))
        router.add("GET", field_paths, self.on_get_field, auth="optional", allow_guest=True)
        router.add("PUT", field_paths, self.on_put_field, json_body=True, allow_guest=True)
        router.add("DELETE", field_paths, self.on_delete_field, allow_guest=True)
        for key in (DISPLAYNAME, AVATAR_URL):
            legacy = client_paths(f"/profile/{{userId}}/{key}", ("r0",))
            router.add("GET", legacy, functools.partial(self.on_get_field, keyName=key),
                       auth="optional", allow_guest=True)
            router.add("PUT", legacy, functools.partial(self.on_put_field, keyName=key),
                       json_body=True, allow_guest=True)

    async def on_get_profile(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        return 200, await self._profiles.get_profile(userId,
                                                     authenticated=req.requester is not None)

    async def on_get_field(self, req: ApiRequest, userId: str, keyName: str  # noqa: N803
                           ) -> tuple[int, Any]:
        return 200, await self._profiles.get_field(userId, keyName,
                                                   authenticated=req.requester is not None)

    async def on_put_field(self, req: ApiRequest, userId: str, keyName: str  # noqa: N803
                           ) -> tuple[int, Any]:
        requester = req.require_requester()
        check_key_name(keyName)
        value = field_value(keyName, req.body)
        await self._profiles.set_field(requester, userId, keyName, value)
        return 200, {}

    async def on_delete_field(self, req: ApiRequest, userId: str, keyName: str  # noqa: N803
                              ) -> tuple[int, Any]:
        await self._profiles.delete_field(req.require_requester(), userId, keyName)
        return 200, {}
