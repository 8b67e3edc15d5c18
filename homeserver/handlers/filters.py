"""Sync filters: uploaded once, immutable, referred to by a per-user numeric id.

/sync resolves its ``filter`` parameter through :meth:`FilterHandler.get_filter`.
"""

from __future__ import annotations

import re
from typing import Any

from homeserver.handlers.account_data import to_json_text
from homeserver.http.errors import forbidden, not_found
from storage.stores.filters import FilterStore

JsonDict = dict[str, Any]

# The ids we hand out: canonical decimal, within a signed 64-bit column.
_FILTER_ID = re.compile(r"^(0|[1-9][0-9]{0,17})$")


class FilterHandler:
    def __init__(self, store: FilterStore) -> None:
        self._store = store

    async def add_filter(self, requester_id: str, user_id: str, filter_json: JsonDict) -> str:
        """Store a (schema-validated) filter for its owner; returns the filter id."""
        if requester_id != user_id:
            raise forbidden("Cannot create filters for other users")
        return str(await self._store.add_filter(user_id, to_json_text(filter_json)))

    async def get_filter_for_client(self, requester_id: str, user_id: str, filter_id: str) -> JsonDict:
        if requester_id != user_id:
            raise forbidden("Cannot get filters for other users")
        return await self.get_filter(user_id, filter_id)

    async def get_filter(self, user_id: str, filter_id: str | int) -> JsonDict:
        """A stored filter; 404 M_NOT_FOUND for an unknown or malformed id."""
        if isinstance(filter_id, str):
            if not _FILTER_ID.fullmatch(filter_id):
                raise not_found("No such filter")
            filter_id = int(filter_id)
        found = await self._store.get_filter(user_id, filter_id)
        if found is None:
            raise not_found("No such filter")
        return found
