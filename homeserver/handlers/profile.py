"""Profiles of local users: display name, avatar URL and custom fields (spec v1.16).

Only the owner may change a profile. Lookups of unknown and deactivated
users answer 404 alike, so the answer says no more than "no profile here". Profiles of
other servers' users are asked over federation (``remote_profile``, set by
federation/remote_queries.py); without federation they are 404 too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.auth.requester import Requester
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.identifiers import split_user_id
from storage.stores.profiles import ProfileStore, SetFieldResult

DISPLAYNAME = "displayname"
AVATAR_URL = "avatar_url"
TIMEZONE = "m.tz"

MAX_DISPLAYNAME_LENGTH = 256  # as Synapse
MAX_AVATAR_URL_LENGTH = 1000  # as Synapse
MAX_KEY_BYTES = 255  # spec: M_KEY_TOO_LARGE above this
# Spec: "the total profile MUST be under 64 KiB"; M_PROFILE_TOO_LARGE names 64 KiB as the
# maximum allowed size, so exactly 64 KiB is accepted (as Synapse).
MAX_PROFILE_BYTES = 64 * 1024

# The spec's Common Namespaced Identifier Grammar (appendices), which the keyName
# description requires: a-z first, then a-z, 0-9, "_", "-" and ".". It also covers
# displayname, avatar_url and m.tz. (The stricter regex in profile.yaml would refuse
# names such as "foo" that Synapse accepts and other clients may already use.)
_KEY_NAME = re.compile(r"[a-z][a-z0-9_.\-]*")


def check_key_name(key: str) -> None:
    """400 ``M_KEY_TOO_LARGE`` past 255 bytes, else 400 ``M_INVALID_PARAM`` off-grammar
    (Synapse's order, so an over-long non-ASCII name reports its length)."""
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise MatrixError(400, f"Profile key longer than {MAX_KEY_BYTES} bytes", Codes.KEY_TOO_LARGE)
    if not _KEY_NAME.fullmatch(key):
        raise MatrixError(400, "Invalid profile key", Codes.INVALID_PARAM)


def profile_size(profile: dict[str, Any]) -> int:
    """Bytes of the profile as canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(profile, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False)
    return len(text.encode("utf-8"))


def _fits(profile: dict[str, Any]) -> bool:
    return profile_size(profile) <= MAX_PROFILE_BYTES


class ProfileHandler:
    def __init__(self, server_name: str, store: ProfileStore) -> None:
        self._server_name = server_name
        self._store = store
        # Called with the user id after a display name or avatar change (e.g. to update
        # the user's member events in their rooms, as Synapse does).
        self.on_member_profile_changed: list[Callable[[str], Awaitable[None]]] = []
        # Federation: (user id of another server, field or None) -> that server's answer.
        self.remote_profile: Callable[[str, str | None], Awaitable[dict[str, Any]]] | None = None

    async def _member_profile_changed(self, user_id: str, key: str) -> None:
        if key in (DISPLAYNAME, AVATAR_URL):
            for observer in self.on_member_profile_changed:
                await observer(user_id)

    def _check_remote(self, authenticated: bool) -> None:
        """Other servers are only asked for an authenticated user (no anonymous
        requests made through us)."""
        if self.remote_profile is None:
            raise not_found("Profile not found")
        if not authenticated:
            raise MatrixError(401, "Looking up another server's users needs an access token",
                              Codes.MISSING_TOKEN)

    async def get_profile(self, user_id: str, authenticated: bool = True) -> dict[str, Any]:
        """Every set field of a local, active user; 400 if ``user_id`` is malformed, else 404.

        Unset fields are left out, as the spec asks.
        """
        _, server = split_user_id(user_id)
        if any(ord(c) < 0x20 for c in user_id):
            raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
        if server != self._server_name:
            self._check_remote(authenticated)
            assert self.remote_profile is not None
            return await self.remote_profile(user_id, None)
        profile = await self._store.get_active_profile_fields(user_id)
        if profile is None:
            raise not_found("Profile not found")
        return profile

    async def get_field(self, user_id: str, key: str, authenticated: bool = True
                        ) -> dict[str, Any]:
        """``{key: value}``; 404 when the field is not set (spec v1.16)."""
        check_key_name(key)
        _, server = split_user_id(user_id)
        if server != self._server_name:
            self._check_remote(authenticated)
            assert self.remote_profile is not None
            profile = await self.remote_profile(user_id, key)
        else:
            profile = await self.get_profile(user_id)
        if profile.get(key) is None:
            raise not_found("Profile field not set")
        return {key: profile[key]}

    async def set_field(self, requester: Requester, target_id: str, key: str, value: Any) -> None:
        """Set a field whose name and value the caller has validated.

        An empty display name or avatar URL clears it (as Synapse).
        """
        check_key_name(key)
        self._check_may_change(requester, target_id, key)
        if key in (DISPLAYNAME, AVATAR_URL) and value == "":
            value = None
        result = await self._store.set_field(target_id, key, value, accept=_fits)
        if result is SetFieldResult.REFUSED:
            raise MatrixError(
                400, f"The profile would exceed its maximum size of {MAX_PROFILE_BYTES} bytes",
                Codes.PROFILE_TOO_LARGE,
            )
        if result is SetFieldResult.NO_PROFILE:
            raise not_found("Profile not found")
        await self._member_profile_changed(target_id, key)

    async def delete_field(self, requester: Requester, target_id: str, key: str) -> None:
        """Remove a field; succeeds when it was not set (spec). For displayname and
        avatar_url this clears them."""
        check_key_name(key)
        self._check_may_change(requester, target_id, key)
        if await self._store.set_field(target_id, key, None) is SetFieldResult.NO_PROFILE:
            raise not_found("Profile not found")
        await self._member_profile_changed(target_id, key)

    @staticmethod
    def _check_may_change(requester: Requester, target_id: str, key: str) -> None:
        # Guests may name themselves (as in Synapse), but change nothing else.
        if requester.is_guest and key != DISPLAYNAME:
            raise MatrixError(403, "Guests may only set a display name",
                              Codes.GUEST_ACCESS_FORBIDDEN)
        if requester.user_id != target_id:
            raise forbidden("Cannot change another user's profile")
