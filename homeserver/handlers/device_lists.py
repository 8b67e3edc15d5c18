"""Device list tracking: who must re-fetch whose device keys.

Every change to a user's devices or keys, and every membership change that may start
or stop two users sharing a room, is written to the ``device_lists`` stream. A reader
(/sync, /keys/changes) turns the rows between two positions into ``changed`` (users
it shares a room with whose devices changed, or who newly share a room with it; the
reader's own user when its other devices change) and ``left`` (users it no longer
shares any room with). Sharing is judged on the current memberships, as Synapse does.
A change recorded for one reader only (``only_to``) goes in that reader's ``changed``
and nobody else's.

It is also the /sync source for ``device_one_time_keys_count`` and
``device_unused_fallback_key_types`` of the syncing device.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.handlers.stream_positions import StreamPositions
from homeserver.notifier import NotifierInterface
from storage.stores.device_lists import DeviceListStore
from storage.stores.e2e_keys import E2eKeyStore
from storage.stores.room_members import RoomMemberStore

JsonDict = dict[str, Any]
# Always reported, even at zero, as Synapse does: clients read a missing count as
# "unknown" and some then skip topping up their keys.
DEFAULT_OTK_ALGORITHM = "signed_curve25519"


@dataclass(frozen=True)
class DeviceListDelta:
    changed: list[str]
    left: list[str]


class DeviceListHandler:
    name = "device_lists"

    def __init__(self, store: DeviceListStore, keys: E2eKeyStore, members: RoomMemberStore,
                 notifier: NotifierInterface) -> None:
        self._store = store
        self._keys = keys
        self._members = members
        self._notifier = notifier
        self._positions = StreamPositions(store.allocate_stream_id)
        # Told (user, device ids, stream id) of each change others may see (the
        # federation sender's m.device_list_update: federation/sender/).
        self.on_shared_change: list[Callable[[str, list[str], int], Awaitable[None]]] = []
        # Told (user, audience) of each change, and (user, room) when a user leaves a
        # room (application services: homeserver/appservice/encryption.py).
        self.on_changed: list[Callable[[str, set[str]], None]] = []
        self.on_left_room: list[Callable[[str, str], Awaitable[None]]] = []

    async def load_position(self) -> None:
        self._positions.start_at(await self._store.max_stream_id())

    @property
    def positions(self) -> StreamPositions:
        """The stream's positions (replication advances a reader's from the writer's)."""
        return self._positions

    def current_position(self) -> int:
        return self._positions.current()

    # Writes

    async def notify_device_change(self, user_id: str, device_ids: list[str],
                                   only_to: str | None = None) -> None:
        """A user's devices or keys changed (device created, renamed or deleted, keys
        uploaded, and for cross-signing: keys and signatures). Wakes the user and
        everyone sharing a room; with ``only_to``, that user alone sees the change
        (Synapse's user-signature stream: a user-signing key, or a signature on
        another user's master key, concerns its owner only)."""
        if not device_ids:
            return
        async with self._positions.write() as position:
            await self._store.add_device_changes(position, user_id, device_ids, only_to)
        if only_to is None:
            for hook in self.on_shared_change:
                await hook(user_id, device_ids, position)
        if self.on_changed:  # listeners are told who (application services' crypto)
            audience = {only_to} if only_to is not None else \
                await self._members.users_sharing_rooms(user_id) | {user_id}
            for listener in self.on_changed:
                listener(user_id, audience)
        # Woken: the user and, through the rooms it is joined to, everyone sharing one
        # (the notifier indexes long-polls by room; the set of people itself is a join
        # over every member of those rooms).
        users = [only_to if only_to is not None else user_id]
        rooms = [] if only_to is not None else \
            [m.room_id for m in await self._members.rooms_for_user(user_id)]
        self._positions.notify_when_readable(
            position, lambda: self._notifier.notify(user_ids=users, room_ids=rooms))

    async def on_device_changed(self, user_id: str, device_id: str) -> None:
        """DeviceHandler hook: a device was created (a login) or renamed; others
        re-fetch its keys and display name (as Synapse's notify_device_update)."""
        await self.notify_device_change(user_id, [device_id])

    async def on_device_deleted(self, user_id: str, device_id: str) -> None:
        """DeviceHandler hook: the device's keys go with it, and others must notice."""
        await self._keys.delete_device(user_id, device_id)
        await self.notify_device_change(user_id, [device_id])

    async def after_persist(self, event: Any) -> None:
        """EventCreationHandler hook: record joins (start sharing) and leaves (may stop
        sharing). Profile changes (join after join) are not membership changes."""
        if event.type != "m.room.member" or event.state_key is None:
            return
        membership = event.content.get("membership")
        history = await self._members.membership_history(event.state_key, event.room_id)
        before = history[-2][0] if len(history) >= 2 else None
        if membership == "join" and before != "join":
            kind = "join"
        elif membership != "join" and before == "join":
            kind = "leave"
        else:
            return
        async with self._positions.write() as position:
            await self._store.add_membership_change(position, event.state_key, event.room_id,
                                                    kind)
        if kind == "leave":
            for left in self.on_left_room:
                await left(event.state_key, event.room_id)
        # The room's members are woken by the event itself; the user may also need to
        # hear about rooms it shares with them elsewhere, so wake it once more.
        self._positions.notify_when_readable(
            position, lambda: self._notifier.notify(user_ids=[event.state_key],
                                                    room_ids=[event.room_id]))

    # Reads

    async def get_delta(self, user_id: str, since: int, upto: int) -> DeviceListDelta:
        """``changed`` and ``left`` for ``user_id`` over positions (since, upto]."""
        upto = min(upto, self.current_position())
        if since >= upto:
            return DeviceListDelta([], [])
        rows = await self._store.get_changes(since, upto)
        if not rows:
            return DeviceListDelta([], [])
        joined = {m.room_id for m in await self._members.rooms_for_user(user_id)}
        changed: set[str] = set()
        private: set[str] = set()  # shown to this reader alone, shared room or not
        maybe_left: set[str] = set()
        for row in rows:
            if row.only_to is not None:
                if row.only_to == user_id:
                    private.add(row.user_id)
            elif row.room_id is None:
                changed.add(row.user_id)
            elif row.membership == "join":
                if row.user_id == user_id:
                    changed |= {m.user_id for m in await self._members.members_of_room(
                        row.room_id)} - {user_id}
                elif row.room_id in joined:
                    changed.add(row.user_id)
            elif row.user_id == user_id:
                maybe_left |= {m.user_id for m in await self._members.members_of_room(
                    row.room_id)}
            elif row.room_id in joined:
                maybe_left.add(row.user_id)
        # Who of them shares a room now (checked for these users only: the whole set
        # of an account in many large rooms is a join over all their members).
        sharing = await self._members.sharing_a_room_among(
            user_id, (changed | maybe_left) - {user_id}) | {user_id}
        left = sorted(u for u in maybe_left if u not in sharing)
        return DeviceListDelta(sorted((changed & sharing) | private), left)

    # EphemeralSource

    async def has_updates(self, user_id: str, room_ids: list[str], since: int) -> bool:
        delta = await self.get_delta(user_id, since, self.current_position())
        return bool(delta.changed or delta.left)

    async def room_events(self, user_id: str, room_ids: list[str], since: int, upto: int
                          ) -> dict[str, list[JsonDict]]:
        return {}

    async def global_section(self, user_id: str, device_id: str | None, since: int, upto: int
                             ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if since > 0:  # an initial sync lists no device changes (as Synapse)
            delta = await self.get_delta(user_id, since, upto)
            out["device_lists"] = {"changed": delta.changed, "left": delta.left}
        if device_id is not None:
            counts, unused = await self._keys.device_key_counts(user_id, device_id)
            counts.setdefault(DEFAULT_OTK_ALGORITHM, 0)
            out["device_one_time_keys_count"] = counts
            out["device_unused_fallback_key_types"] = unused
        return out
