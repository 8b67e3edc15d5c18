"""Shared helpers for federation tests.

:class:`FakeRemote` is a homeserver that exists only as a server name and a signing
key: it builds PDUs signed as that server (what another homeserver would send), and
its key can be put in a homeserver's key cache so that signature checks pass without
any network. Tests that need a real second server use tests/rest/test_federation_keys.py's
``FederationTestCase``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from federation.discovery import ServerTarget
from homeserver.app import Homeserver
from homeserver.events import auth as event_auth
from homeserver.events.hashing import compute_event_id, encode_base64, event_reference
from homeserver.events.model import Event
from homeserver.events.room_versions import EventFormat, get_room_version
from homeserver.events.signing import generate_signing_key, key_id, sign_event
from storage.stores.server_keys import RemoteKeyRecord, ServerKeyStore

JsonDict = dict[str, Any]
YEAR_MS = 365 * 24 * 3600 * 1000


class NowhereDiscovery:
    """Server discovery for tests with fake remotes: every server resolves to a
    loopback port nothing listens on (no DNS, outbound requests fail at once)."""

    async def resolve(self, server_name: str) -> ServerTarget:
        return ServerTarget(server_name, server_name, (("127.0.0.1", 1),))


class FakeRemote:
    """A remote server's signing identity. ``event(...)`` builds a signed event of one
    of its users, citing the given prev and auth events (ids, or events for v1/v2)."""

    def __init__(self, name: str = "remote.test", key_version: str = "fake",
                 signing_key: Any = None) -> None:
        """``signing_key``: sign as a real server (e.g. a second in-process homeserver's
        ``federation.local_keys.signing_key``) instead of a fresh key."""
        self.name = name
        self.signing_key = signing_key or generate_signing_key(key_version)
        self.key_id = key_id(self.signing_key)
        self._counter = 0

    @property
    def verify_key_b64(self) -> str:
        return encode_base64(self.signing_key.verify_key.encode())

    async def trust_on(self, hs: Homeserver, valid_until_ts: int | None = None) -> None:
        """Put this server's key in ``hs``'s key cache (as if fetched from it)."""
        now = hs.clock.time_msec()
        until = valid_until_ts if valid_until_ts is not None else now + YEAR_MS
        await ServerKeyStore(hs.db).store_remote_keys([RemoteKeyRecord(
            self.name, self.key_id, self.verify_key_b64, until, None, now, self.name, "{}")])

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.name}"

    def event(self, room_id: str, room_version: str, sender: str, event_type: str,
              content: JsonDict, prev: Sequence[Event], auth: Iterable[Event],
              state_key: str | None = None, ts: int = 1_000_000,
              depth: int | None = None, **extra: Any) -> Event:
        version = get_room_version(room_version)
        assert version is not None
        self._counter += 1
        pdu: JsonDict = {
            "room_id": room_id, "type": event_type, "sender": sender, "content": content,
            "origin_server_ts": ts, "origin": self.name,
            "depth": depth if depth is not None else max((p.depth for p in prev), default=0) + 1,
            "prev_events": [event_reference(p.pdu, version) for p in prev],
            "auth_events": [event_reference(a.pdu, version) for a in auth],
            **extra,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if version.event_format == EventFormat.V1:
            pdu["event_id"] = f"$fake{self._counter}:{self.name}"
        signed = sign_event(pdu, self.name, self.signing_key, version)
        return Event(compute_event_id(signed, version), signed, version)

    def pdu(self, event: Event) -> JsonDict:
        """The event as it travels in a transaction (a copy)."""
        return copy.deepcopy(event.pdu)


def persister_of(hs: Homeserver) -> Any:
    """The homeserver's event persister (reached through its federation ingest)."""
    assert hs.federation is not None and hs.federation.ingest is not None
    return hs.federation.ingest.persister


async def current_state(hs: Homeserver, room_id: str) -> dict[tuple[str, str], Event]:
    return await persister_of(hs).current_state(room_id)  # type: ignore[no-any-return]


async def auth_events_for(hs: Homeserver, room_id: str, probe: Event,
                          state: dict[tuple[str, str], Event] | None = None) -> list[Event]:
    """The auth events ``probe`` should cite given ``state`` (default: current)."""
    if state is None:
        state = await current_state(hs, room_id)
    keys = event_auth.auth_types_for_event(probe)
    if event_auth.create_in_auth_events(probe.room_version):
        keys.add(("m.room.create", ""))
    return [state[k] for k in sorted(keys) if k in state]


async def latest_events(hs: Homeserver, room_id: str) -> list[Event]:
    """The room's forward extremities, as events."""
    snap = await persister_of(hs).snapshot(room_id)
    found = await hs.stores.events.get_events(snap.extremities)
    return [found[e] for e in snap.extremities]
