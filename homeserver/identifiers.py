"""Matrix identifiers: user IDs, localparts, server names."""

from __future__ import annotations

import re

from homeserver.http.errors import Codes, MatrixError

# Spec "User Identifiers": the localpart grammar of new user ids.
_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")
MAX_USER_ID_LENGTH = 255


def user_id(localpart: str, server_name: str) -> str:
    return f"@{localpart}:{server_name}"


def split_user_id(uid: str) -> tuple[str, str]:
    """``@alice:example.org`` → (``alice``, ``example.org``); 400 if malformed."""
    if not uid.startswith("@") or ":" not in uid:
        raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
    local, _, server = uid[1:].partition(":")
    if not local or not server:
        raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
    return local, server


def check_localpart(localpart: str, server_name: str) -> None:
    """Reject localparts new accounts may not use (``M_INVALID_USERNAME``)."""
    if not localpart:
        raise MatrixError(400, "User ID cannot be empty", Codes.INVALID_USERNAME)
    if not _LOCALPART.fullmatch(localpart):
        raise MatrixError(
            400, "User ID can only contain characters a-z, 0-9, or '=_-./+'",
            Codes.INVALID_USERNAME,
        )
    if localpart.startswith("_"):
        raise MatrixError(400, "User ID may not begin with _", Codes.INVALID_USERNAME)
    if len(user_id(localpart, server_name)) > MAX_USER_ID_LENGTH:
        raise MatrixError(400, f"User ID may not be longer than {MAX_USER_ID_LENGTH} characters",
                          Codes.INVALID_USERNAME)


def check_room_id(room_id: str) -> None:
    """``!opaque:server`` (v1-11) or ``!hash`` (v12); anything else is a 400."""
    if not room_id.startswith("!") or len(room_id) < 2 or len(room_id.encode()) > 255:
        raise MatrixError(400, "Invalid room ID", Codes.INVALID_PARAM)


def check_event_type(event_type: str) -> None:
    if not event_type or len(event_type.encode()) > 255:
        raise MatrixError(400, "Invalid event type", Codes.INVALID_PARAM)


def check_room_alias(alias: str) -> tuple[str, str]:
    """``#local:server`` → (local, server); a 400 otherwise."""
    if not alias.startswith("#") or ":" not in alias or len(alias.encode()) > 255:
        raise MatrixError(400, "Invalid room alias", Codes.INVALID_PARAM)
    local, _, server = alias[1:].partition(":")
    if not local or not server:
        raise MatrixError(400, "Invalid room alias", Codes.INVALID_PARAM)
    return local, server
