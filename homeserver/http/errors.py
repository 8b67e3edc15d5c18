"""Matrix errors: every failure a client sees is one of these, rendered as
``{"errcode": "M_...", "error": "..."}`` with the right HTTP status."""

from __future__ import annotations

from typing import Any


class Codes:
    """The errcodes we emit (spec names; Synapse's where the spec is silent)."""

    UNRECOGNIZED = "M_UNRECOGNIZED"
    UNKNOWN = "M_UNKNOWN"
    NOT_FOUND = "M_NOT_FOUND"
    FORBIDDEN = "M_FORBIDDEN"
    UNAUTHORIZED = "M_UNAUTHORIZED"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    UNKNOWN_DEVICE = "M_UNKNOWN_DEVICE"
    BAD_JSON = "M_BAD_JSON"
    NOT_JSON = "M_NOT_JSON"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_PARAM = "M_INVALID_PARAM"
    TOO_LARGE = "M_TOO_LARGE"
    PROFILE_TOO_LARGE = "M_PROFILE_TOO_LARGE"
    KEY_TOO_LARGE = "M_KEY_TOO_LARGE"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    USER_IN_USE = "M_USER_IN_USE"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    EXCLUSIVE = "M_EXCLUSIVE"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
    UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
    ROOM_IN_USE = "M_ROOM_IN_USE"
    INVALID_ROOM_STATE = "M_INVALID_ROOM_STATE"
    BAD_STATE = "M_BAD_STATE"
    USER_LOCKED = "M_USER_LOCKED"
    USER_SUSPENDED = "M_USER_SUSPENDED"
    THREEPID_AUTH_FAILED = "M_THREEPID_AUTH_FAILED"
    THREEPID_MEDIUM_NOT_SUPPORTED = "M_THREEPID_MEDIUM_NOT_SUPPORTED"
    SERVER_NOT_TRUSTED = "M_SERVER_NOT_TRUSTED"
    CANNOT_OVERWRITE_MEDIA = "M_CANNOT_OVERWRITE_MEDIA"
    NOT_YET_UPLOADED = "M_NOT_YET_UPLOADED"
    WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"


class MatrixError(Exception):
    """An error with a Matrix errcode and an HTTP status; safe to show to the client.

    Never put secrets or message content into ``msg``: it is sent to the client
    and may be logged.
    """

    def __init__(
        self,
        code: int,
        msg: str,
        errcode: str = Codes.UNKNOWN,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.errcode = errcode
        self.headers = headers or {}
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"errcode": self.errcode, "error": self.msg}
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"MatrixError({self.code}, {self.errcode}, {self.msg!r})"


class InteractiveAuthRequired(Exception):
    """Raised to send a 401 User-Interactive Authentication response body."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("interactive auth required")
        self.body = body


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, msg, Codes.BAD_JSON)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, msg, Codes.MISSING_PARAM)


def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, msg, Codes.NOT_FOUND)


def forbidden(msg: str) -> MatrixError:
    return MatrixError(403, msg, Codes.FORBIDDEN)
