"""A plugin used by tests/rest/test_erasure.py: records the users it was asked to erase
and fails while ``FAIL`` is set (the purge job must then retry, not skip it)."""

from __future__ import annotations

from plugins import hookimpl

ERASED: list[str] = []
FAIL: list[bool] = [False]


@hookimpl
def erase_user_data(user_id: str) -> None:
    if FAIL[0]:
        raise RuntimeError("plugin storage unavailable")
    ERASED.append(user_id)
