"""POST /user_directory/search: find users by id or display name.

Who can be found is Synapse's default (``search_all_users: false``), which is also the
spec's minimum: users sharing a joined room with the searcher, and users joined to a
room that is publicly joinable or world-readable. Deactivated users never appear.
The matching and its limits are described in ``storage/stores/user_directory.py``.
"""

from __future__ import annotations

from typing import Any

from storage.stores.user_directory import UserDirectoryStore

MAX_LIMIT = 50  # as Synapse: max(min(limit, 50), 0)
MAX_TERMS = 8
MAX_TERM_CHARS = 256


class UserDirectoryHandler:
    def __init__(self, store: UserDirectoryStore) -> None:
        self._store = store

    async def search(self, user_id: str, search_term: str, limit: int) -> dict[str, Any]:
        limit = max(min(limit, MAX_LIMIT), 0)
        # Words of the term; an over-long term is cut rather than refused.
        full = " ".join(search_term[:MAX_TERM_CHARS].split())
        terms = list(dict.fromkeys(full.split()))[:MAX_TERMS]
        if not terms:
            return {"results": [], "limited": False}
        found = await self._store.search(user_id, terms, full, limit + 1)
        results = []
        for user in found[:limit]:
            entry: dict[str, Any] = {"user_id": user.user_id}
            if user.display_name is not None:
                entry["display_name"] = user.display_name
            if user.avatar_url is not None:
                entry["avatar_url"] = user.avatar_url
            results.append(entry)
        return {"results": results, "limited": len(found) > limit}
