"""Small Matrix client-server helpers shared by scenarios."""

from __future__ import annotations

from typing import Any

from harness.loadgen import PROTOCOL_ERROR
from harness.scenarios.base import BenchContext, BenchUser

REGISTER_PATH = "/_matrix/client/v3/register"
LOGIN_PATH = "/_matrix/client/v3/login"


async def _post(ctx: BenchContext, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with ctx.session.post(ctx.url(path), json=body) as resp:
        raw = await resp.read()
        try:
            data = await resp.json(content_type=None) if raw else None
        except ValueError:
            data = None
        return resp.status, data


async def register(ctx: BenchContext, user: BenchUser) -> int:
    """Register *user* with the UIA dummy flow (401 + session, then m.login.dummy)."""
    body: dict[str, Any] = {
        "username": user.localpart,
        "password": user.password,
        "initial_device_display_name": "parley-bench",
    }
    status, data = await _post(ctx, REGISTER_PATH, body)
    if status == 200:  # server skipped UIA entirely
        return _check_token(data)
    if status != 401 or not isinstance(data, dict) or "session" not in data:
        return status if status != 401 else PROTOCOL_ERROR
    body["auth"] = {"type": "m.login.dummy", "session": data["session"]}
    status, data = await _post(ctx, REGISTER_PATH, body)
    return _check_token(data) if status == 200 else status


async def login(ctx: BenchContext, user: BenchUser) -> int:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user.localpart},
        "password": user.password,
        "initial_device_display_name": "parley-bench",
    }
    status, data = await _post(ctx, LOGIN_PATH, body)
    return _check_token(data) if status == 200 else status


def _check_token(data: Any) -> int:
    ok = isinstance(data, dict) and "user_id" in data and "access_token" in data
    return 200 if ok else PROTOCOL_ERROR
