"""Profiles of local users: display name and avatar URL.

Only the owner may change a profile. Lookups of unknown, deactivated or remote
users all answer 404 alike, so the answer says no more than "no profile here".
Remote lookups will go over federation once it exists.
"""

from __future__ import annotations

from typing import Any

from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.identifiers import split_user_id
from storage.stores.profiles import Profile, ProfileStore

MAX_DISPLAYNAME_LENGTH = 256  # as Synapse
MAX_AVATAR_URL_LENGTH = 1000  # as Synapse


def profile_json(profile: Profile) -> dict[str, Any]:
    """Unset fields are left out, as the spec asks."""
    out: dict[str, Any] = {}
    if profile.displayname is not None:
        out["displayname"] = profile.displayname
    if profile.avatar_url is not None:
        out["avatar_url"] = profile.avatar_url
    return out


class ProfileHandler:
    def __init__(self, server_name: str, store: ProfileStore) -> None:
        self._server_name = server_name
        self._store = store

    async def get_profile(self, user_id: str) -> Profile:
        """The profile of a local, active user; 400 if ``user_id`` is malformed, else 404."""
        _, server = split_user_id(user_id)
        if any(ord(c) < 0x20 for c in user_id):
            raise MatrixError(400, "Invalid user ID", Codes.INVALID_PARAM)
        if server != self._server_name:
            raise not_found("Profile not found")
        profile = await self._store.get_active_profile(user_id)
        if profile is None:
            raise not_found("Profile not found")
        return profile

    async def get_field(self, user_id: str, field: str) -> dict[str, Any]:
        """``{field: value}``; 404 when the field is not set (spec v1.16)."""
        value = profile_json(await self.get_profile(user_id)).get(field)
        if value is None:
            raise not_found("Profile field not set")
        return {field: value}

    async def set_displayname(self, requester_id: str, target_id: str, value: str) -> None:
        """An empty string clears the display name (as Synapse)."""
        self._check_owner(requester_id, target_id)
        if not await self._store.set_displayname(target_id, value or None):
            raise not_found("Profile not found")

    async def set_avatar_url(self, requester_id: str, target_id: str, value: str) -> None:
        """An empty string clears the avatar (as Synapse)."""
        self._check_owner(requester_id, target_id)
        if not await self._store.set_avatar_url(target_id, value or None):
            raise not_found("Profile not found")

    @staticmethod
    def _check_owner(requester_id: str, target_id: str) -> None:
        if requester_id != target_id:
            raise forbidden("Cannot change another user's profile")
