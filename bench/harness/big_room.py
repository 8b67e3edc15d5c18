"""A large room on a Synapse host, and one remote join into it, timed (bench/large_room_join.py).

Two halves, both plain client-server API over aiohttp against loopback servers:

* :func:`populate`: an admin (shared-secret registration) creates a public room with an
  alias; N members register (shared secret) and join with bounded concurrency. Along the
  way some send messages, some change their display name (a new member event) and some
  set a state event of their own, and the admin changes the topic, so the room's DAG has
  forks, repeated state and messages, not only a chain of joins. It ends with a few
  messages so the newest history is a conversation.
* :func:`measure_join`: a user of another server joins through the host; (a) how long
  ``POST /join`` takes, (b) how long until the room is usable there: ``/messages`` shows
  the populated history, ``/joined_members`` lists every member the host lists, and a
  message the joiner sends is stored on the host. The three probes run concurrently
  from the moment the join returns; "usable" is when the last of them succeeded.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlparse

import aiohttp

JsonDict = dict[str, Any]
CS = "/_matrix/client/v3"
PASSWORD = "bench-Passw0rd-xyz!"
POPULATE_TAG = "bigroom populate"
NOTE_TYPE = "org.parley.bench.note"
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class BenchError(RuntimeError):
    """A request the bench depends on did not succeed (message: request line, status and
    the start of the answer; never a token)."""


def q(value: str) -> str:
    return quote(value, safe="")


class Client:
    """One server's client API on loopback (refuses any other host)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        host = urlparse(base_url).hostname or ""
        if host not in _LOOPBACK:
            raise ValueError(f"refusing non-loopback target {base_url}")
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None,
                   params: dict[str, str] | None = None,
                   timeout_s: float = 60.0) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        kw: dict[str, Any] = {"headers": headers, "params": params,
                              "timeout": aiohttp.ClientTimeout(total=timeout_s)}
        if body is not None:
            kw["json"] = body
        async with self.session.request(method, self.base_url + path, **kw) as resp:
            raw = await resp.read()
            status = resp.status
        try:
            return status, (json.loads(raw) if raw else None)
        except ValueError:
            return status, raw[:300]

    async def ok(self, method: str, path: str, token: str | None = None, body: Any = None,
                 params: dict[str, str] | None = None, timeout_s: float = 60.0,
                 retries: int = 3) -> Any:
        """The answer of a request that must succeed (transport errors and 429/5xx are
        retried a few times with a short back-off)."""
        last = ""
        for attempt in range(retries + 1):
            try:
                status, data = await self.call(method, path, token, body, params, timeout_s)
            except (TimeoutError, aiohttp.ClientError) as e:
                status, data = 0, repr(e)
            if status == 200:
                return data
            last = f"{method} {path} -> {status} {str(data)[:300]}"
            if status not in (0, 429, 500, 502, 503, 504) or attempt == retries:
                break
            await asyncio.sleep(0.5 * (attempt + 1))
        raise BenchError(last)


@dataclass(frozen=True)
class Account:
    user_id: str
    token: str


async def register_shared_secret(client: Client, secret: str, localpart: str,
                                 admin: bool = False) -> Account:
    """Synapse's admin registration (``/_synapse/admin/v1/register``, HMAC-SHA1 over
    nonce, user, password and admin flag)."""
    path = "/_synapse/admin/v1/register"
    nonce = (await client.ok("GET", path))["nonce"]
    msg = b"\x00".join([nonce.encode(), localpart.encode(), PASSWORD.encode(),
                        b"admin" if admin else b"notadmin"])
    mac = hmac.new(secret.encode(), msg, hashlib.sha1).hexdigest()
    done = await client.ok("POST", path, body={"nonce": nonce, "username": localpart,
                                               "password": PASSWORD, "admin": admin,
                                               "mac": mac})
    return Account(done["user_id"], done["access_token"])


async def register_open(client: Client, localpart: str) -> Account:
    """Open registration with the dummy stage (both servers' bench configs allow it)."""
    body: JsonDict = {"username": localpart, "password": PASSWORD,
                      "initial_device_display_name": "joinbench"}
    status, data = await client.call("POST", f"{CS}/register", body=body)
    if status == 401 and isinstance(data, dict):
        body["auth"] = {"type": "m.login.dummy", "session": data.get("session")}
        status, data = await client.call("POST", f"{CS}/register", body=body)
    if status != 200 or not isinstance(data, dict):
        raise BenchError(f"register {localpart} -> {status} {str(data)[:300]}")
    return Account(data["user_id"], data["access_token"])


def _txn() -> str:
    return secrets.token_hex(8)


async def send_text(client: Client, token: str, room_id: str, text: str) -> str:
    done = await client.ok("PUT", f"{CS}/rooms/{q(room_id)}/send/m.room.message/{_txn()}",
                           token, {"msgtype": "m.text", "body": text})
    return str(done["event_id"])


# ---- populate -----------------------------------------------------------------------------


@dataclass
class PopulatePlan:
    members: int
    concurrency: int = 8
    message_every: int = 7  # every k-th member sends a message after joining
    displayname_every: int = 11  # ... changes its display name (a second member event)
    note_every: int = 13  # ... sets a state event of its own
    topic_every: int = 150  # the admin changes the topic every k joins
    tail_messages: int = 5


@dataclass
class PopulateResult:
    room_id: str
    alias: str
    admin: Account
    members: int
    messages: int = 0
    state_changes: int = 0
    seconds: float = 0.0


async def populate(client: Client, secret: str, plan: PopulatePlan, localpart_prefix: str,
                   say: Callable[[str], None]) -> PopulateResult:
    """Create the room on the host and fill it (see the module docstring)."""
    t0 = time.monotonic()
    admin = await register_shared_secret(client, secret, f"{localpart_prefix}admin", admin=True)
    created = await client.ok("POST", f"{CS}/createRoom", admin.token, {
        "preset": "public_chat", "room_alias_name": "bigroom",
        "name": "joinbench big room", "topic": "topic 0",
        "power_level_content_override": {"events": {NOTE_TYPE: 0}},
    })
    room_id = str(created["room_id"])
    server_name = admin.user_id.split(":", 1)[1]
    result = PopulateResult(room_id, f"#bigroom:{server_name}", admin, plan.members)
    say(f"host room {room_id} ({result.alias}); registering and joining "
        f"{plan.members} members, {plan.concurrency} at a time")

    done = 0
    last_report = time.monotonic()
    gate = asyncio.Semaphore(max(1, plan.concurrency))
    topic_lock = asyncio.Lock()

    async def one(i: int) -> None:
        nonlocal done, last_report
        async with gate:
            who = await register_shared_secret(client, secret, f"{localpart_prefix}m{i:05d}")
            await client.ok("POST", f"{CS}/rooms/{q(room_id)}/join", who.token, {},
                            timeout_s=120)
            if i % plan.message_every == 0:
                await send_text(client, who.token, room_id, f"{POPULATE_TAG}: hello from {i}")
                result.messages += 1
            if i % plan.displayname_every == 0:
                await client.ok("PUT", f"{CS}/rooms/{q(room_id)}/state/m.room.member/"
                                       f"{q(who.user_id)}", who.token,
                                {"membership": "join", "displayname": f"Member {i}"})
                result.state_changes += 1
            if i % plan.note_every == 0:
                await client.ok("PUT", f"{CS}/rooms/{q(room_id)}/state/{NOTE_TYPE}/"
                                       f"{q(who.user_id)}", who.token, {"n": i})
                result.state_changes += 1
            done += 1
            if done % plan.topic_every == 0:
                async with topic_lock:
                    await client.ok("PUT", f"{CS}/rooms/{q(room_id)}/state/m.room.topic/",
                                    admin.token, {"topic": f"topic after {done} joins"})
                    result.state_changes += 1
            now = time.monotonic()
            if now - last_report >= 10 or done == plan.members:
                last_report = now
                rate = done / max(now - t0, 1e-6)
                say(f"  populate: {done}/{plan.members} joined "
                    f"({rate:.1f}/s, {now - t0:.0f}s elapsed)")

    await asyncio.gather(*(one(i) for i in range(1, plan.members + 1)))
    for k in range(plan.tail_messages):
        await send_text(client, admin.token, room_id, f"{POPULATE_TAG}: tail {k}")
        result.messages += 1
    result.seconds = time.monotonic() - t0
    return result


async def joined_members(client: Client, token: str, room_id: str,
                         timeout_s: float = 120.0) -> set[str]:
    data = await client.ok("GET", f"{CS}/rooms/{q(room_id)}/joined_members", token,
                           timeout_s=timeout_s)
    return set(data.get("joined", {}))


async def leave_and_wait(joiner: Client, account: Account, room_id: str, host: Client,
                         host_token: str, timeout_s: float = 60.0) -> bool:
    """The joiner leaves and H sees it (untimed): a server about to be stopped must not
    stay joined, or later joiners would try it for backfill and state as if it were up."""
    status, _ = await joiner.call("POST", f"{CS}/rooms/{q(room_id)}/leave", account.token, {})
    if status != 200:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if account.user_id not in await joined_members(host, host_token, room_id):
            return True
        await asyncio.sleep(0.5)
    return False


# ---- one join, measured -------------------------------------------------------------------


@dataclass
class JoinTiming:
    """Seconds from the start of ``POST /join`` (None: not reached before the deadline)."""

    joiner: str
    join_s: float | None = None
    timeline_s: float | None = None
    members_s: float | None = None
    echo_s: float | None = None
    members_seen: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def usable_s(self) -> float | None:
        parts = (self.timeline_s, self.members_s, self.echo_s)
        return None if any(p is None for p in parts) else max(p for p in parts if p is not None)


async def measure_join(joiner: Client, account: Account, target: str, via: str,
                       host: Client, host_token: str, expected: set[str],
                       label: str, timeout_s: float = 600.0, poll_s: float = 0.2,
                       on_joined: Callable[[], None] | None = None) -> JoinTiming:
    """Join ``target`` (alias or id) through ``via`` and time it (module docstring).
    ``expected``: the members the host listed before this join (the joiner is added);
    ``on_joined``: called (synchronously) as soon as ``POST /join`` has returned."""
    timing = JoinTiming(label)
    t0 = time.perf_counter()
    deadline = t0 + timeout_s

    def since() -> float:
        return time.perf_counter() - t0

    try:
        status, data = await joiner.call("POST", f"{CS}/join/{q(target)}", account.token, {},
                                         params={"server_name": via}, timeout_s=timeout_s)
    except (TimeoutError, aiohttp.ClientError) as e:
        timing.errors.append(f"join: {e!r}")
        return timing
    if status != 200 or not isinstance(data, dict) or "room_id" not in data:
        timing.errors.append(f"join -> {status} {str(data)[:300]}")
        return timing
    timing.join_s = since()
    if on_joined is not None:
        on_joined()
    room_id = str(data["room_id"])
    want = expected | {account.user_id}

    async def poll(what: str, probe: Callable[[], Any]) -> float | None:
        last = ""
        while time.perf_counter() < deadline:
            try:
                if await probe():
                    return since()
            except BenchError as e:
                last = str(e)
            except (TimeoutError, aiohttp.ClientError) as e:
                last = repr(e)
            await asyncio.sleep(poll_s)
        timing.errors.append(f"{what}: not before the deadline ({last[:300]})")
        return None

    async def timeline_ok() -> bool:
        params: dict[str, str] = {"dir": "b", "limit": "50"}
        seen: list[str] = []
        for _ in range(6):  # a few pages back, past other joiners' events
            status, page = await joiner.call("GET", f"{CS}/rooms/{q(room_id)}/messages",
                                             account.token, params=params, timeout_s=120)
            if status != 200 or not isinstance(page, dict):
                raise BenchError(f"/messages -> {status} {str(page)[:200]}")
            for ev in page.get("chunk", []):
                body = (ev.get("content") or {}).get("body")
                if ev.get("type") == "m.room.message" and isinstance(body, str) \
                        and body.startswith(POPULATE_TAG):
                    return True
                seen.append(str(ev.get("type")))
            end = page.get("end")
            if not end or not page.get("chunk"):
                break
            params = {**params, "from": str(end)}
        # Why not (shown if the deadline passes): what the pages held instead.
        raise BenchError(f"no history yet: {len(seen)} events back ({', '.join(seen[:8])}"
                         f"{'...' if len(seen) > 8 else ''}), last end token "
                         f"{'present' if params.get('from') else 'absent'}")

    async def members_ok() -> bool:
        seen = await joined_members(joiner, account.token, room_id)
        timing.members_seen = len(seen)
        return want <= seen

    sent: list[str] = []

    async def echo_ok() -> bool:
        if not sent:
            sent.append(await send_text(joiner, account.token, room_id,
                                        f"joinbench: hello from {label}"))
        status, _ = await host.call("GET", f"{CS}/rooms/{q(room_id)}/event/{q(sent[0])}",
                                    host_token)
        return status == 200

    timing.timeline_s, timing.members_s, timing.echo_s = await asyncio.gather(
        poll("timeline", timeline_ok), poll("members", members_ok), poll("echo", echo_ok))
    return timing
