"""History visibility: which events a user may see, enforced on every read path
(/event, /messages, /context, /sync, /members?at, relations).

Rules (spec "History visibility", as Synapse applies them):
- ``world_readable``: everyone.
- ``shared``: members who are joined now see everything; others see what was sent
  while they were joined.
- ``invited``: what was sent while they were invited or joined.
- ``joined``: what was sent while they were joined.
A user always sees their own membership events, and a history-visibility change
under the more visible of its old and new value.

:meth:`VisibilityHandler.filter_events` reads the visibility and the user's membership
in the state *before* each event from the room's state groups (with events of other
servers, stream order is not graph order: a remote branch merged late, backfilled
history). So do the range answers (:meth:`~VisibilityHandler.visible_ranges`: the
runs of stream positions whose events share the state before them, each judged by
that state) and :meth:`~VisibilityHandler.can_see_room_state` (the room's current
state, not its latest change by stream order). Only events without state (outliers,
stand-in probes) are judged by the room's stream of changes, as in a linear room.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Collection, Sequence

from homeserver.events.model import Event
from storage.stores.room_members import RoomMemberStore
from storage.stores.state_history import StateHistoryStore

VISIBLE_WHEN = {
    "joined": {"join"},
    "invited": {"join", "invite"},
    "shared": {"join"},
    "world_readable": set(),
}
# Below any stream position (events without one are read at position 0).
MIN_POSITION = -(2**62)


class _Timeline:
    """Values of one state key over stream positions."""

    def __init__(self, changes: list[tuple[int, str]], default: str) -> None:
        self._positions = [p for p, _ in changes]
        self._values = [v for _, v in changes]
        self._default = default

    def before(self, position: int) -> str:
        i = bisect.bisect_left(self._positions, position)
        return self._values[i - 1] if i else self._default

    def positions(self) -> list[int]:
        return list(self._positions)


def _allowed(visibility: str, membership: str, joined_now: bool) -> bool:
    """Whether an event is visible, given the history visibility and the user's
    membership in the state before it, and whether the user is joined now."""
    if visibility == "world_readable":
        return True
    if visibility == "shared" and joined_now:
        return True
    return membership in VISIBLE_WHEN[visibility]


# Most to least visible.
_PRIORITY = ("world_readable", "shared", "invited", "joined")


def _more_visible(before: str, new: object) -> str:
    """The visibility a history-visibility change is read under: the more visible of
    the old and the new value (as Synapse), so whoever may see the room on either
    side of the boundary sees the change itself (e.g. a peeker of a room just made
    world-readable sees the event that made it so)."""
    if not isinstance(new, str) or new not in VISIBLE_WHEN:
        new = "shared"
    return new if _PRIORITY.index(new) < _PRIORITY.index(before) else before


def _visibility_value(content: dict[str, object] | None) -> str:
    """The history visibility a state event's content sets ("shared" if none or unknown)."""
    value = (content or {}).get("history_visibility", "shared")
    return value if isinstance(value, str) and value in VISIBLE_WHEN else "shared"


def _membership_value(content: dict[str, object] | None) -> str:
    """The membership a member event's content sets ("leave" if none)."""
    value = (content or {}).get("membership", "leave")
    return value if isinstance(value, str) else "leave"


def _merge_ranges(ranges: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    """Sorted, with touching ``(after, upto)`` intervals joined."""
    out: list[tuple[int, int | None]] = []
    for after, upto in sorted(ranges, key=lambda r: r[0]):
        if out and out[-1][1] is not None and out[-1][1] >= after:
            last_upto = out[-1][1]
            out[-1] = (out[-1][0], None if upto is None else max(last_upto, upto))
        else:
            out.append((after, upto))
    return out


class VisibilityHandler:
    def __init__(self, history: StateHistoryStore, members: RoomMemberStore) -> None:
        self._history = history
        self._members = members

    async def _visibility_timeline(self, room_id: str) -> _Timeline:
        changes = []
        for pos, _sk, raw in await self._history.state_changes(
                room_id, "m.room.history_visibility", ""):
            value = json.loads(raw).get("content", {}).get("history_visibility", "shared")
            changes.append((pos, value if value in VISIBLE_WHEN else "shared"))
        return _Timeline(changes, "shared")

    async def _membership_timeline(self, room_id: str, user_id: str) -> _Timeline:
        history = await self._members.membership_history(user_id, room_id)
        return _Timeline([(pos, membership) for membership, pos in history], "leave")

    async def filter_events(self, user_id: str, events: Sequence[Event],
                            joined: Collection[str] = ()) -> list[Event]:
        """The events (in the given order) that ``user_id`` may see, judged by the
        history visibility and the user's membership in the state before each event.
        An event without state here (an outlier, or a stand-in "probe" at a stream
        position, see homeserver/handlers/pagination.py) is judged by the room's
        stream of changes at its stream position, as in a linear room. ``joined``: rooms
        the caller just read the user is joined to (their membership is not read again)."""
        joined_now: dict[str, bool] = {}
        for room_id in dict.fromkeys(ev.room_id for ev in events):
            if room_id in joined:
                joined_now[room_id] = True
                continue
            current = await self._members.get_membership(user_id, room_id)
            joined_now[room_id] = current is not None and current.membership == "join"
        wanted = [ev.event_id for ev in events
                  if not (ev.type == "m.room.member" and ev.state_key == user_id)]
        before = await self._history.visibility_state_before(wanted, user_id)
        timelines: dict[str, tuple[_Timeline, _Timeline]] = {}
        out = []
        for ev in events:
            if ev.type == "m.room.member" and ev.state_key == user_id:
                out.append(ev)
                continue
            found = before.get(ev.event_id)
            if found is not None:
                visibility = _visibility_value(found[0])
                membership = (found[1] or {}).get("membership", "leave")
                if not isinstance(membership, str):
                    membership = "leave"
            else:
                if ev.room_id not in timelines:
                    timelines[ev.room_id] = (
                        await self._visibility_timeline(ev.room_id),
                        await self._membership_timeline(ev.room_id, user_id))
                vis, mem = timelines[ev.room_id]
                pos = ev.internal.stream_ordering or 0
                visibility, membership = vis.before(pos), mem.before(pos)
            if ev.type == "m.room.history_visibility" and ev.state_key == "":
                visibility = _more_visible(visibility, ev.content.get("history_visibility"))
            if _allowed(visibility, membership, joined_now[ev.room_id]):
                out.append(ev)
        return out

    async def visible_ranges(self, user_id: str, room_id: str) -> list[tuple[int, int | None]]:
        """The stream positions of ``room_id`` whose events ``user_id`` may see, as
        ``(after, upto)`` intervals (``after < position <= upto``; ``upto`` None: no end),
        by the same rule as :meth:`filter_events` (the user's own membership events
        aside): each run of events sharing the state before them is judged by that
        state. Why: counts, orderings and pages computed in SQL over these ranges only
        ever reflect visible events (search counts, thread summaries, /threads)."""
        segments, changes = await self._history.visibility_segments(room_id, user_id)
        current = await self._members.get_membership(user_id, room_id)
        joined_now = current is not None and current.membership == "join"
        if not segments:  # no timeline yet: judged by the empty state
            return [(MIN_POSITION, None)] if _allowed("shared", "leave", joined_now) else []
        out: list[tuple[int, int | None]] = []
        for i, (position, vis, member) in enumerate(segments):
            after = position - 1 if i else MIN_POSITION
            upto = segments[i + 1][0] - 1 if i + 1 < len(segments) else None
            if _allowed(_visibility_value(vis), _membership_value(member), joined_now):
                if out and out[-1][1] == after:
                    out[-1] = (out[-1][0], upto)
                else:
                    out.append((after, upto))
        # History-visibility changes are read under the more visible of the old and new
        # value (see filter_events): add those visible outside the ranges above.
        for pos, content, vis, member in changes:
            if any(a < pos and (u is None or pos <= u) for a, u in out):
                continue
            if _allowed(_more_visible(_visibility_value(vis), content.get("history_visibility")),
                        _membership_value(member), joined_now):
                out.append((pos - 1, pos))
        return _merge_ranges(out)

    async def can_see_room_state(self, user_id: str, room_id: str) -> tuple[bool, int | None]:
        """(allowed, stream position to read state at: None = current)."""
        current = await self._members.get_membership(user_id, room_id)
        if current is not None and current.membership == "join":
            return True, None
        # The current state's visibility (with a fork, the latest change by stream
        # order may be on a branch that lost, or hidden).
        if _visibility_value(await self._history.current_history_visibility(room_id)) \
                == "world_readable":
            return True, None
        if current is not None and current.membership in ("leave", "ban") and not current.forgotten:
            history = await self._members.membership_history(user_id, room_id)
            if any(m == "join" for m, _ in history):
                return True, current.stream_ordering
        return False, None
