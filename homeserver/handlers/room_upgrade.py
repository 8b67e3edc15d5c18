"""Room upgrades (POST /rooms/{roomId}/upgrade), in Synapse's order: check the
requester may send ``m.room.tombstone``; create the replacement room with the old
room's transferable state (name, topic, avatar, join rules, history visibility, guest
access, encryption, server ACLs, power levels, space children) and bans, and
``predecessor`` in its create event; tombstone the old room; move local aliases, the
canonical alias and the directory listing; finally restrict the old room so that
ordinary members can no longer talk or invite there.

Power levels across versions: a v12 room gives its creators (the upgrader plus
``additional_creators``) infinite power and forbids listing them in ``users``, so they
are taken out; upgrading into v12 from an older version raises the tombstone level to
150 (MSC4289: only creators upgrade by default). Upgrading out of v12, the old room's
creators get 100 so that they keep the power they had. Where the upgrader lacks the
level to copy some state, they get it for the copy only (as Synapse does) and their
own level is restored afterwards.

When a local user joins a replacement room (the upgrader included), their push rules
about the old room are copied to the new one (the spec's "SHOULD transfer personalized
settings such as notifications"; SyTest "local user has push rules copied to upgraded
room").
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.events import auth as event_auth
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import (
    NAMED_LEVEL_KEYS,
    get_creators,
    is_valid_user_id,
    parse_level,
)
from homeserver.events.room_versions import RoomVersion, get_room_version, supports_join_rule
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.handlers.room_creation import RoomCreationHandler
from homeserver.http.errors import Codes, MatrixError
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

COPIED_STATE = ("m.room.join_rules", "m.room.name", "m.room.topic", "m.room.history_visibility",
                "m.room.guest_access", "m.room.avatar", "m.room.encryption",
                "m.room.server_acl", "m.room.power_levels")
CREATOR_TOMBSTONE_LEVEL = 150
PL_KEY: StateKey = ("m.room.power_levels", "")
CREATE_KEY: StateKey = ("m.room.create", "")


def _int(value: Any, default: int) -> int:
    """A power level as an integer (v1-v9 rooms may hold integer strings)."""
    parsed = parse_level(value)
    return default if parsed is None else parsed


def _integer_levels(content: dict[str, Any]) -> dict[str, Any]:
    """Power levels with every level written as an integer, so that the content is valid
    in any room version (v10+ refuse the integer strings v1-v9 allow); values that are
    no level at all are dropped, as they would be ignored."""
    out = copy.deepcopy(content)
    for key in NAMED_LEVEL_KEYS:
        if key in out:
            level = parse_level(out[key])
            if level is None:
                del out[key]
            else:
                out[key] = level
    for key in ("events", "notifications", "users"):
        if key in out:
            value = out[key]
            out[key] = ({k: parse_level(v) for k, v in value.items() if parse_level(v) is not None}
                        if isinstance(value, dict) else {})
    return out


class RoomUpgradeHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        creation: EventCreationHandler,
        room_creation: RoomCreationHandler,
        aliases: RoomAliasStore,
        rooms: RoomStore,
        push_rules: PushRulesHandler | None = None,
    ) -> None:
        self._server_name = server_name
        self._push_rules = push_rules
        self._clock = clock
        self._creation = creation
        self._room_creation = room_creation
        self._aliases = aliases
        self._rooms = rooms
        # Concurrent identical requests share one upgrade (Synapse's response cache).
        self._in_flight: dict[tuple[str, str], list[defer.Deferred[str]]] = {}

    async def upgrade(self, user_id: str, room_id: str, new_version_id: str,
                      additional_creators: list[str] | None = None) -> str:
        """Returns the replacement room's id."""
        new_version = get_room_version(new_version_id)
        if new_version is None:
            raise MatrixError(400, "Your homeserver does not support this room version",
                              Codes.UNSUPPORTED_ROOM_VERSION)
        old_version = await self._creation.room_version(room_id)  # 404 for unknown rooms
        extra = list(dict.fromkeys(additional_creators or []))
        if not all(is_valid_user_id(u) for u in extra):
            raise MatrixError(400, "additional_creators must be valid user IDs",
                              Codes.INVALID_PARAM)
        key = (room_id, user_id)
        waiters = self._in_flight.get(key)
        if waiters is not None:
            d: defer.Deferred[str] = defer.Deferred()
            waiters.append(d)
            return await d
        self._in_flight[key] = waiters = []
        try:
            new_room = await self._upgrade(user_id, room_id, old_version, new_version, extra)
        except Exception as e:
            for d in waiters:
                d.errback(e)
            raise
        finally:
            del self._in_flight[key]
        for d in waiters:
            d.callback(new_room)
        return new_room

    async def _upgrade(self, user_id: str, room_id: str, old_version: RoomVersion,
                       new_version: RoomVersion, extra_creators: list[str]) -> str:
        state = await self._creation.current_state(room_id)
        create = state.get(CREATE_KEY)
        if create is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        self._check_may_tombstone(user_id, room_id, old_version, state, create)

        creators = ({user_id, *extra_creators} if new_version.creators_have_infinite_power
                    else set())
        initial: dict[StateKey, dict[str, Any]] = {}
        for (etype, skey), ev in state.items():
            if etype in COPIED_STATE and skey == "":
                initial[(etype, skey)] = copy.deepcopy(ev.content)
            elif (etype == "m.space.child" and create.content.get("type") == "m.space"
                  and ev.content):
                initial[(etype, skey)] = copy.deepcopy(ev.content)
        join_rules = initial.get(("m.room.join_rules", ""))
        if join_rules is not None and not supports_join_rule(new_version, join_rules.get("join_rule")):
            # e.g. restricted into a v1-v7 room: the closest rule the version has.
            initial[("m.room.join_rules", "")] = {"join_rule": "invite"}
        final_pl: dict[str, Any] | None = None
        if PL_KEY in initial:
            final_pl = self._new_power_levels(initial[PL_KEY], user_id, creators, create,
                                              new_version)
            initial[PL_KEY] = self._with_copy_power(final_pl, user_id, new_version)
            if initial[PL_KEY] == final_pl:
                final_pl = None

        creation_content: dict[str, Any] = {"predecessor": {"room_id": room_id}}
        snap = await self._creation.snapshot(room_id)
        if snap.extremities:
            creation_content["predecessor"]["event_id"] = snap.extremities[0]
        for field in ("type", "m.federate"):
            if field in create.content:
                creation_content[field] = copy.deepcopy(create.content[field])
        if new_version.creators_have_infinite_power and extra_creators:
            creation_content["additional_creators"] = extra_creators
        new_room, _ = await self._room_creation.create_room(user_id, {
            "room_version": new_version.identifier,
            "preset": "private_chat",
            "creation_content": creation_content,
            "initial_state": [{"type": t, "state_key": sk, "content": c}
                              for (t, sk), c in initial.items()],
        })
        logger.info("upgrading a room to version %s", new_version.identifier)

        for (etype, target), ev in state.items():
            if etype == "m.room.member" and ev.membership == "ban" and target not in creators:
                try:
                    await self._creation.send(new_room, user_id, "m.room.member",
                                              dict(ev.content), target)
                except MatrixError as e:
                    logger.warning("could not copy a ban into the new room: %s", e.msg)

        await self._creation.send(room_id, user_id, "m.room.tombstone", {
            "body": "This room has been replaced", "replacement_room": new_room}, "")
        await self._move_aliases(user_id, room_id, new_room, state)
        record = await self._rooms.get_room(room_id)
        if record is not None and record.is_public:
            await self._rooms.set_public(new_room, True)
            await self._rooms.set_public(room_id, False)
        await self._restrict_old_room(user_id, room_id)
        if final_pl is not None:
            await self._creation.send(new_room, user_id, "m.room.power_levels", final_pl, "")
        return new_room

    @staticmethod
    def _check_may_tombstone(user_id: str, room_id: str, version: RoomVersion,
                             state: dict[StateKey, Event], create: Event) -> None:
        """The real auth rules, on a draft tombstone against the current state."""
        draft = Event("$draft", {
            "room_id": room_id, "type": "m.room.tombstone", "state_key": "",
            "sender": user_id, "content": {"body": "This room has been replaced"},
            "prev_events": [], "auth_events": [], "depth": 0, "origin_server_ts": 0,
        }, version)
        try:
            event_auth.check_auth_rules(draft, state, create)
        except event_auth.AuthError as e:
            raise MatrixError(403, "You cannot upgrade this room", Codes.FORBIDDEN) from e

    @staticmethod
    def _new_power_levels(old: dict[str, Any], user_id: str, creators: set[str],
                          create: Event, new_version: RoomVersion) -> dict[str, Any]:
        content = _integer_levels(old)
        users = content.get("users")
        users = dict(users) if isinstance(users, dict) else {}
        events = content.get("events")
        events = dict(events) if isinstance(events, dict) else {}
        old_has_creators = create.room_version.creators_have_infinite_power
        if new_version.creators_have_infinite_power:
            users = {u: lvl for u, lvl in users.items() if u not in creators}
            if not old_has_creators:
                events["m.room.tombstone"] = max(_int(events.get("m.room.tombstone"), 100),
                                                 CREATOR_TOMBSTONE_LEVEL)
        elif old_has_creators:
            for creator in sorted(get_creators(create)):
                users[creator] = max(_int(users.get(creator), 0), 100)
        content["users"] = users
        content["events"] = events
        return content

    @staticmethod
    def _with_copy_power(content: dict[str, Any], user_id: str,
                         new_version: RoomVersion) -> dict[str, Any]:
        """``content`` with the upgrader raised enough to copy every state event."""
        if new_version.creators_have_infinite_power:
            return content  # the upgrader is a creator of the new room
        events = content.get("events", {})
        needed = max(_int(content.get("state_default"), 50), _int(content.get("ban"), 50),
                     max((_int(v, 0) for v in events.values()), default=0))
        users = content["users"]
        current = _int(users.get(user_id), _int(content.get("users_default"), 0))
        if current >= needed:
            return content
        raised = copy.deepcopy(content)
        raised["users"][user_id] = needed
        return raised

    async def _move_aliases(self, user_id: str, old_room: str, new_room: str,
                            state: dict[StateKey, Event]) -> None:
        for alias in await self._aliases.aliases_for_room(old_room):
            found = await self._aliases.get_alias(alias)
            if found is None or not await self._aliases.delete_alias(alias):
                continue
            await self._aliases.create_alias(alias, new_room, found[1], self._clock.time_msec())
        canonical = state.get(("m.room.canonical_alias", ""))
        if canonical is None:
            return
        old_content = dict(canonical.content)
        new_content: dict[str, Any] = {}
        alias = canonical.content.get("alias")
        if isinstance(alias, str) and self._is_local_alias(alias):
            new_content["alias"] = alias
            old_content.pop("alias", None)
        alt = canonical.content.get("alt_aliases")
        if isinstance(alt, list):
            local = [a for a in alt if isinstance(a, str) and self._is_local_alias(a)]
            if local:
                new_content["alt_aliases"] = local
            remaining = [a for a in alt if a not in local]
            if remaining:
                old_content["alt_aliases"] = remaining
            else:
                old_content.pop("alt_aliases", None)
        for room, content in ((old_room, old_content), (new_room, new_content)):
            try:
                await self._creation.send(room, user_id, "m.room.canonical_alias", content, "")
            except MatrixError as e:
                logger.warning("could not update the canonical alias on upgrade: %s", e.msg)

    def _is_local_alias(self, alias: str) -> bool:
        return alias.startswith("#") and alias.partition(":")[2] == self._server_name

    async def _restrict_old_room(self, user_id: str, room_id: str) -> None:
        """Raise events_default and invite to max(50, users_default + 1) (Synapse)."""
        pl = (await self._creation.current_state(room_id, [PL_KEY])).get(PL_KEY)
        if pl is None:
            return
        content = copy.deepcopy(pl.content)
        restricted = max(_int(content.get("users_default"), 0) + 1, 50)
        updated = False
        for key in ("invite", "events_default"):
            if _int(content.get(key), 0) < restricted:
                content[key] = restricted
                updated = True
        if updated:
            try:
                await self._creation.send(room_id, user_id, "m.room.power_levels", content, "")
            except MatrixError as e:
                logger.warning("could not restrict the old room after upgrade: %s", e.msg)


    # ---- push rules follow their users into the replacement room

    def on_event_persisted(self, event: Event) -> None:
        """Fan-out subscriber: a local user's join into a room that replaces another
        copies their rules about the old room (in the background; failures are logged)."""
        if (self._push_rules is None or event.type != "m.room.member"
                or event.membership != "join" or event.state_key != event.sender
                or not event.sender.endswith(":" + self._server_name)):
            return
        prev = event.pdu.get("unsigned", {}).get("prev_content")
        if isinstance(prev, dict) and prev.get("membership") == "join":
            return  # a profile change, not a join
        d = defer.ensureDeferred(self.copy_push_rules_on_join(event.sender, event.room_id))
        d.addErrback(lambda f: logger.error("copying push rules into %s failed: %s",
                                            event.room_id, f.getTraceback()))

    async def copy_push_rules_on_join(self, user_id: str, room_id: str) -> None:
        if self._push_rules is None:
            return
        create = (await self._creation.current_state(room_id, [CREATE_KEY])).get(CREATE_KEY)
        predecessor = create.content.get("predecessor") if create is not None else None
        old_room = predecessor.get("room_id") if isinstance(predecessor, dict) else None
        if not isinstance(old_room, str) or old_room == room_id:
            return
        ruleset = await self._push_rules.get_ruleset(user_id)
        for kind, rules in ruleset.items():
            for rule in rules:
                copied = _rule_for_new_room(kind, rule, old_room, room_id)
                if copied is None:
                    continue
                rule_id, body = copied
                try:
                    await self._push_rules.set_rule(user_id, kind, rule_id, body)
                    if rule.get("enabled") is False:
                        await self._push_rules.set_enabled(user_id, kind, rule_id, False)
                except MatrixError as e:
                    logger.warning("could not copy a push rule on upgrade: %s", e.msg)


def _rule_for_new_room(kind: str, rule: dict[str, Any], old_room: str,
                       new_room: str) -> tuple[str, dict[str, Any]] | None:
    """(rule id, body) of the copy of a user rule about ``old_room``, or None when the
    rule is not about it: a room rule keyed by the old room id, or an override/underride
    rule with an ``event_match`` on ``room_id`` equal to it (Synapse's behaviour)."""
    rule_id = rule.get("rule_id")
    if not isinstance(rule_id, str) or rule.get("default") or rule_id.startswith("."):
        return None
    if kind == "room":
        return (new_room, {"actions": rule.get("actions", [])}) if rule_id == old_room else None
    if kind not in ("override", "underride"):
        return None
    conditions = rule.get("conditions")
    if not isinstance(conditions, list):
        return None
    about_room = False
    new_conditions = []
    for cond in conditions:
        if (isinstance(cond, dict) and cond.get("kind") == "event_match"
                and cond.get("key") == "room_id" and cond.get("pattern") == old_room):
            cond = {**cond, "pattern": new_room}
            about_room = True
        new_conditions.append(cond)
    if not about_room:
        return None
    new_id = rule_id.replace(old_room, new_room) if old_room in rule_id else f"{rule_id}-{new_room}"
    return new_id, {"actions": rule.get("actions", []), "conditions": new_conditions}
