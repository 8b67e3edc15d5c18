"""The authorization rules of room versions 1 to 12: one implementation for every
event, local or remote, checked against its auth events or against the current state
(soft failure). What differs between versions comes from the :class:`RoomVersion`
table (``special_case_aliases``, ``redaction_auth_rule``, ``knock``...).

Comments number the steps as the v6-v11 spec text does. Room versions 1-5 have an extra
rule 4 for ``m.room.aliases`` (so their later numbers are one higher, and v1/v2 end
with rule 11 for ``m.room.redaction``); room version 12 inserts a new rule 2 (the room
id must be the create event's id), so from there on its numbers are one higher too.

What is deliberately *not* here, because it needs I/O or keys:

* "Events must be signed by the server denoted by the sender" and rule 4.2's signature of
  the authorising server are verified cryptographically where signatures are checked;
  :func:`required_signature_servers` says which servers must have signed, and
  :func:`check_auth_rules` also refuses an event whose ``signatures`` lack the authorising
  server (a structural check that catches local mistakes).
* Rule 2 (v12: 3), the shape of the event's ``auth_events`` list, needs the referenced
  events: :func:`auth_state_from_auth_events` applies it and builds the state map that
  :func:`check_auth_rules` then checks against.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import nacl.exceptions
import nacl.signing

from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import decode_base64
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import (
    CREATE,
    MEMBER,
    NAMED_LEVEL_KEYS,
    POWER_LEVELS,
    Level,
    domain_of,
    get_creators,
    get_named_level,
    get_required_level,
    get_user_power_level,
    is_strict_int,
    is_valid_level,
    is_valid_user_id,
    parse_level,
    power_levels_content,
)
from homeserver.events.room_versions import EventFormat, RoomVersion, get_room_version

__all__ = [
    "AuthError",
    "auth_state_from_auth_events",
    "auth_types_for_event",
    "check_auth_rules",
    "check_local_redaction",
    "create_in_auth_events",
    "get_named_level",
    "get_required_level",
    "get_user_power_level",
    "redaction_allowed",
    "required_signature_servers",
    "signed_by_any_key",
    "third_party_invite_public_keys",
]

JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"
REDACTION = "m.room.redaction"
ALIASES = "m.room.aliases"
AUTHORISING_USER = "join_authorised_via_users_server"
_CREATE_KEY: StateKey = (CREATE, "")
_ABSENT = object()


class AuthError(Exception):
    """An event is not allowed by the authorization rules. ``reason`` is meant for
    humans (it becomes the 403 message) and never echoes event content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def create_in_auth_events(room_version: RoomVersion) -> bool:
    """Whether events cite the create event in ``auth_events``: yes in v10/11; never in
    v12, where the room id *is* the create event's id and so implies it."""
    return not room_version.room_id_is_create_hash


def auth_types_for_event(event: Event) -> set[StateKey]:
    """The (type, state_key) pairs whose current state events are the auth events of
    ``event``, per the server-server spec's "auth events selection" for its room version.

    The create event is included only where :func:`create_in_auth_events` says so. Pairs
    are returned whether or not such state exists; the caller picks the ones present.
    """
    if event.type == CREATE:
        return set()
    version = event.room_version
    types: set[StateKey] = {(POWER_LEVELS, ""), (MEMBER, event.sender)}
    if create_in_auth_events(version):
        types.add(_CREATE_KEY)
    if event.type != MEMBER:
        return types
    target = event.state_key
    if target is not None:
        types.add((MEMBER, target))
    membership = event.membership
    if membership in ("join", "invite", "knock"):
        types.add((JOIN_RULES, ""))
    if membership == "invite":
        token = _third_party_invite_token(event.content)
        if token is not None:
            types.add((THIRD_PARTY_INVITE, token))
    if membership == "join" and version.restricted_joins:
        authoriser = event.content.get(AUTHORISING_USER)
        if isinstance(authoriser, str):
            types.add((MEMBER, authoriser))
    return types


def _third_party_invite_token(content: Mapping[str, Any]) -> str | None:
    tpi = content.get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
    token = signed.get("token") if isinstance(signed, Mapping) else None
    return token if isinstance(token, str) else None


def auth_state_from_auth_events(event: Event, auth_events: Mapping[str, Event]) -> dict[StateKey, Event]:
    """Rule 2 (v12: 3): validate the event's ``auth_events`` list and return it as a state
    map for :func:`check_auth_rules`. ``auth_events`` maps event id to event and must hold
    every id the event cites (fetching them is the caller's job)."""
    state: dict[StateKey, Event] = {}
    expected = auth_types_for_event(event)
    for event_id in event.auth_event_ids:
        auth_event = auth_events.get(event_id)
        if auth_event is None:
            raise AuthError("an auth event is missing")
        if auth_event.state_key is None:
            raise AuthError("an auth event is not a state event")
        key = auth_event.state_pair
        # 2.1: duplicate entries for a (type, state_key) pair.
        if key in state:
            raise AuthError("duplicate auth events for the same state")
        # 2.2: entries the auth events selection would not pick (in v12 this includes
        # the create event, which must never be cited).
        if key not in expected:
            raise AuthError("unexpected auth event")
        # 2.3: entries that were themselves rejected.
        if auth_event.internal.rejected_reason is not None:
            raise AuthError("an auth event was rejected")
        # v12 3.4 (and the intent of every version): auth events of another room.
        if auth_event.room_id != event.room_id:
            raise AuthError("an auth event belongs to another room")
        state[key] = auth_event
    # 2.4 (v10/11): the create event must be among them.
    if create_in_auth_events(event.room_version) and event.type != CREATE and _CREATE_KEY not in state:
        raise AuthError("the create event is missing from the auth events")
    return state


def required_signature_servers(event: Event) -> set[str]:
    """The servers whose signatures the event needs: the sender's; in v1/v2 also the
    event id's domain; and for membership events carrying
    ``join_authorised_via_users_server`` (v8+) the authorising user's (rule 4.2)."""
    servers = {domain_of(event.sender)}
    if event.room_version.event_format == EventFormat.V1:
        servers.add(domain_of(event.event_id))
    if event.type == MEMBER and event.room_version.restricted_joins:
        authoriser = event.content.get(AUTHORISING_USER)
        if isinstance(authoriser, str):
            servers.add(domain_of(authoriser))
    return servers


def check_auth_rules(event: Event, auth_state: Mapping[StateKey, Event], create_event: Event) -> None:
    """Raise :class:`AuthError` unless the rules of the event's room version allow
    ``event`` given ``auth_state`` (its auth events, or the current state for soft-failure
    checks) and the room's ``create_event``. A create event is checked on its own
    (pass ``{}`` and the event itself)."""
    # 1. m.room.create.
    if event.type == CREATE:
        _check_create(event)
        return
    # v12 2 (the room id is the create event's id), and for every version: the create
    # event and the auth state belong to this room (rule 2, v12 3, is auth_state_from_auth_events).
    _check_same_room(event, auth_state, create_event)

    # 3. m.federate: a non-federating room only accepts events from the creator's server.
    _check_federate(event.sender, create_event)

    # v1-v5 4. m.room.aliases: the state key must be the sender's domain.
    if event.type == ALIASES and event.room_version.special_case_aliases:
        if event.state_key is None:
            raise AuthError("m.room.aliases must be a state event")
        if event.state_key != domain_of(event.sender):
            raise AuthError("m.room.aliases must be keyed by the sender's server name")
        return

    # 4. m.room.member.
    if event.type == MEMBER:
        _check_membership(event, auth_state, create_event)
        return

    # 5. The sender must be joined.
    if _membership(auth_state, event.sender) != "join":
        raise AuthError("the sender is not in the room")

    sender_level = get_user_power_level(event.sender, auth_state, create_event)

    # 6. m.room.third_party_invite: allowed iff the sender may invite.
    if event.type == THIRD_PARTY_INVITE:
        if sender_level >= get_named_level("invite", auth_state):
            return
        raise AuthError("insufficient power level to invite")

    # 7. The event type's required power level. From v3 there is no special rule for
    # m.room.redaction (the redact level is applied when the redaction is, see
    # redaction_allowed); v1/v2 have rule 11 below.
    required = get_required_level(event.type, event.is_state(), power_levels_content(auth_state))
    if sender_level < required:
        raise AuthError("insufficient power level to send this event")

    # 8. A state key that is a user id may only be set by that user.
    state_key = event.state_key
    if state_key is not None and state_key.startswith("@") and state_key != event.sender:
        raise AuthError("cannot set state keyed by another user")

    # 9. m.room.power_levels.
    if event.type == POWER_LEVELS:
        _check_power_levels(event, auth_state, create_event, sender_level)
        return
    # v1/v2 11. m.room.redaction: the redact level, or an event of the same server.
    if event.type == REDACTION and event.room_version.redaction_auth_rule:
        if sender_level >= get_named_level("redact", auth_state):
            return
        redacts = event.redacts
        if redacts is not None and domain_of(redacts) == domain_of(event.event_id):
            return
        raise AuthError("insufficient power level to redact this event")
    # 10. Otherwise, allow.


def _check_create(event: Event) -> None:
    version = event.room_version
    content = event.content
    if event.state_key != "":
        raise AuthError("the create event must have an empty state key")
    if not is_valid_user_id(event.sender):
        raise AuthError("the create event's sender is not a valid user id")
    # 1.1: no prev events.
    if event.pdu.get("prev_events"):
        raise AuthError("the create event must not have prev events")
    # 1.2
    if version.room_id_is_create_hash:
        # v12: no room_id; the room id is derived from the event's reference hash.
        if "room_id" in event.pdu:
            raise AuthError("the create event must not have a room id in this room version")
    else:
        room_id = event.pdu.get("room_id")
        if not isinstance(room_id, str) or domain_of(room_id) != domain_of(event.sender):
            raise AuthError("the room id's domain does not match the sender's")
    # 1.3: a present room_version must be recognised. We also require it to be the version
    # we are applying: an absent one means "1".
    declared = content.get("room_version", "1")
    if not isinstance(declared, str) or get_room_version(declared) is None:
        raise AuthError("unsupported room version")
    if declared != version.identifier:
        raise AuthError("the create event's room version does not match the room")
    # 1.4 (v1-v10): a creator is required (v11+ use the sender instead).
    if not version.implicit_room_creator and not isinstance(content.get("creator"), str):
        raise AuthError("the create event has no creator")
    # v12 1.4: additional_creators must be valid user ids.
    if version.creators_have_infinite_power and "additional_creators" in content:
        extra = content["additional_creators"]
        if not isinstance(extra, list) or not all(is_valid_user_id(u) for u in extra):
            raise AuthError("additional_creators must be a list of valid user ids")
    # 1.5: otherwise, allow.


def _check_same_room(event: Event, auth_state: Mapping[StateKey, Event], create_event: Event) -> None:
    """The event, its create event and its auth state must all belong to one room."""
    if create_event.type != CREATE or create_event.state_key != "":
        raise AuthError("the room has no create event")
    if create_event.room_version != event.room_version:
        raise AuthError("the event's room version does not match the room")
    if create_event.internal.rejected_reason is not None:
        raise AuthError("the room's create event was rejected")
    if event.room_version.room_id_is_create_hash:
        # v12 2: the room id is the create event's id with "!" instead of "$".
        create_id = create_event.event_id
        if not create_id.startswith("$") or event.room_id != "!" + create_id[1:]:
            raise AuthError("the room id does not match the create event")
    elif create_event.room_id != event.room_id:
        raise AuthError("the create event belongs to another room")
    cited = auth_state.get(_CREATE_KEY)
    if cited is not None and cited.event_id != create_event.event_id:
        raise AuthError("conflicting create events")
    for key, state_event in auth_state.items():
        if key != _CREATE_KEY and state_event.room_id != event.room_id:
            raise AuthError("an auth event belongs to another room")


def _check_federate(user_id: str, create_event: Event) -> None:
    # Anything but an explicit true (the default) forbids federation, as Synapse does:
    # a malformed m.federate must not open a room the creator meant to keep local.
    if create_event.content.get("m.federate", True) is True:
        return
    if domain_of(user_id) != domain_of(create_event.sender):
        raise AuthError("this room does not federate")


def _membership(auth_state: Mapping[StateKey, Event], user_id: str) -> str | None:
    member = auth_state.get((MEMBER, user_id))
    return member.membership if member is not None else None


def _join_rule(auth_state: Mapping[StateKey, Event]) -> str | None:
    # No join rules event (or no join_rule in it) behaves as "invite", as in Synapse and
    # Ruma; the spec's rules are then the same as for an invite-only room.
    event = auth_state.get((JOIN_RULES, ""))
    if event is None:
        return "invite"
    rule = event.content.get("join_rule", "invite")
    return rule if isinstance(rule, str) else None


def _initial_creator(create_event: Event) -> str | None:
    """The user whose join directly after the create event is allowed (4.3.1): the
    ``creator`` in v10, the create event's sender from v11 (not additional creators)."""
    if create_event.room_version.implicit_room_creator:
        return create_event.sender
    creator = create_event.content.get("creator")
    return creator if isinstance(creator, str) else None


def _signed_by(event: Event, server: str) -> bool:
    signatures = event.pdu.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    entry = signatures.get(server)
    return isinstance(entry, Mapping) and bool(entry)


def _check_membership(event: Event, auth_state: Mapping[StateKey, Event], create_event: Event) -> None:
    target = event.state_key
    membership = event.membership
    # 4.1: a state key and a membership are required.
    if target is None or membership is None:
        raise AuthError("membership events need a state key and a membership")
    # Stricter than the spec, as Synapse: a non-federating room has no remote members.
    _check_federate(target, create_event)
    content = event.content
    # 4.2 (v8+): the authorising user's server must have signed (cryptographic
    # verification is done with the other signatures; see required_signature_servers).
    if AUTHORISING_USER in content and event.room_version.restricted_joins:
        authoriser = content[AUTHORISING_USER]
        if not is_valid_user_id(authoriser) or not _signed_by(event, domain_of(authoriser)):
            raise AuthError("the join is not signed by the authorising server")

    if membership == "join":
        _check_join(event, auth_state, create_event, target)
        return
    sender = event.sender
    sender_membership = _membership(auth_state, sender)
    target_membership = _membership(auth_state, target)
    sender_level = get_user_power_level(sender, auth_state, create_event)
    target_level = get_user_power_level(target, auth_state, create_event)

    if membership == "invite":
        # 4.4.1: third-party invites: allowed by the identity server's signature alone.
        if "third_party_invite" in content:
            _check_third_party_invite(event, auth_state, target, target_membership)
            return
        # 4.4.2
        if sender_membership != "join":
            raise AuthError("the inviter is not in the room")
        # 4.4.3
        if target_membership in ("join", "ban"):
            raise AuthError("the invitee is already joined or is banned")
        # 4.4.4 / 4.4.5
        if sender_level >= get_named_level("invite", auth_state):
            return
        raise AuthError("insufficient power level to invite")

    if membership == "leave":
        # 4.5.1: leaving (or rejecting an invite / retracting a knock, v7+) oneself.
        if sender == target:
            if sender_membership in ("invite", "join") or (
                    sender_membership == "knock" and event.room_version.knock):
                return
            raise AuthError("cannot leave a room one is not in")
        # 4.5.2
        if sender_membership != "join":
            raise AuthError("the sender is not in the room")
        # 4.5.3: unbanning needs the ban level.
        if target_membership == "ban" and sender_level < get_named_level("ban", auth_state):
            raise AuthError("insufficient power level to unban")
        # 4.5.4 / 4.5.5: kicking needs the kick level and more power than the target.
        if sender_level >= get_named_level("kick", auth_state) and target_level < sender_level:
            return
        raise AuthError("insufficient power level to kick this user")

    if membership == "ban":
        # 4.6.1
        if sender_membership != "join":
            raise AuthError("the sender is not in the room")
        # 4.6.2 / 4.6.3
        if sender_level >= get_named_level("ban", auth_state) and target_level < sender_level:
            return
        raise AuthError("insufficient power level to ban this user")

    if membership == "knock" and event.room_version.knock:
        # 4.7.1
        allowed_rules = ("knock", "knock_restricted") if event.room_version.knock_restricted else ("knock",)
        if _join_rule(auth_state) not in allowed_rules:
            raise AuthError("this room does not accept knocks")
        # 4.7.2
        if sender != target:
            raise AuthError("cannot knock on behalf of another user")
        # 4.7.3 / 4.7.4
        if sender_membership not in ("ban", "invite", "join"):
            return
        raise AuthError("cannot knock while banned, invited or joined")

    # 4.8: unknown membership.
    raise AuthError("unknown membership")


def third_party_invite_public_keys(content: Mapping[str, Any]) -> list[str]:
    """The Base64 ed25519 keys of an ``m.room.third_party_invite`` event's content: its
    ``public_key`` and every ``public_keys[].public_key``."""
    keys: list[str] = []
    if isinstance(content.get("public_key"), str):
        keys.append(content["public_key"])
    entries = content.get("public_keys")
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
            keys.append(entry["public_key"])
    return keys


def signed_by_any_key(signed: Mapping[str, Any], public_keys: list[str]) -> str | None:
    """The first of ``public_keys`` that made one of the ed25519 signatures on ``signed``
    (whatever server name and key id they are filed under, as the spec says), or None."""
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return None
    try:
        message = encode_canonical_json(
            {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")})
    except ValueError:
        return None
    sigs: list[bytes] = []
    for per_server in signatures.values():
        if not isinstance(per_server, Mapping):
            continue
        for kid, sig in per_server.items():
            if isinstance(kid, str) and kid.startswith("ed25519:") and isinstance(sig, str):
                try:
                    raw = decode_base64(sig)
                except ValueError:
                    continue
                if len(raw) == 64:
                    sigs.append(raw)
    for key_b64 in public_keys:
        try:
            verify_key = nacl.signing.VerifyKey(decode_base64(key_b64))
        except (ValueError, nacl.exceptions.CryptoError):
            continue
        for raw in sigs:
            try:
                verify_key.verify(message, raw)
                return key_b64
            except nacl.exceptions.BadSignatureError:
                continue
    return None


def _check_third_party_invite(event: Event, auth_state: Mapping[StateKey, Event], target: str,
                              target_membership: str | None) -> None:
    """Rule 4.4.1: an invite made good by an identity server's signed block."""
    # 4.4.1.1
    if target_membership == "ban":
        raise AuthError("the invitee is banned")
    tpi = event.content.get("third_party_invite")
    signed = tpi.get("signed") if isinstance(tpi, Mapping) else None
    # 4.4.1.2
    if not isinstance(signed, Mapping):
        raise AuthError("the third-party invite is not signed")
    mxid, token = signed.get("mxid"), signed.get("token")
    # 4.4.1.3 / 4.4.1.4
    if not isinstance(mxid, str) or not isinstance(token, str):
        raise AuthError("the third-party invite's signed block lacks mxid or token")
    if mxid != target:
        raise AuthError("the third-party invite is for another user")
    # 4.4.1.5 / 4.4.1.6
    invite_event = auth_state.get((THIRD_PARTY_INVITE, token))
    if invite_event is None:
        raise AuthError("no third-party invite with this token")
    if invite_event.sender != event.sender:
        raise AuthError("the sender did not make the third-party invite")
    # 4.4.1.7 / 4.4.1.8
    if signed_by_any_key(signed, third_party_invite_public_keys(invite_event.content)) is None:
        raise AuthError("the third-party invite's signature does not match its keys")


def _check_join(event: Event, auth_state: Mapping[StateKey, Event], create_event: Event, target: str) -> None:
    version = event.room_version
    # 4.3.1: the creator's own join straight after the create event.
    prev = event.prev_event_ids
    if len(prev) == 1 and prev[0] == create_event.event_id and target == _initial_creator(create_event):
        return
    # 4.3.2
    if event.sender != target:
        raise AuthError("cannot join on behalf of another user")
    current = _membership(auth_state, target)
    # 4.3.3
    if current == "ban":
        raise AuthError("the user is banned from this room")
    join_rule = _join_rule(auth_state)
    # 4.3.4: invite-only (and knock) rooms need an invite (or an existing join).
    if join_rule == "invite" or (join_rule == "knock" and version.knock):
        if current in ("invite", "join"):
            return
        raise AuthError("the user is not invited to this room")
    # 4.3.5: restricted rooms.
    if (join_rule == "restricted" and version.restricted_joins) or (
        join_rule == "knock_restricted" and version.knock_restricted
    ):
        # 4.3.5.1
        if current in ("invite", "join"):
            return
        # 4.3.5.2: someone joined, able to invite, must have vouched for the join.
        authoriser = event.content.get(AUTHORISING_USER)
        if not isinstance(authoriser, str) or not is_valid_user_id(authoriser):
            raise AuthError("the join is not authorised by a room member")
        if _membership(auth_state, authoriser) != "join":
            raise AuthError("the authorising user is not in the room")
        if get_user_power_level(authoriser, auth_state, create_event) < get_named_level("invite", auth_state):
            raise AuthError("the authorising user cannot invite")
        # 4.3.5.3
        return
    # 4.3.6
    if join_rule == "public":
        return
    # 4.3.7
    raise AuthError("the user is not allowed to join this room")


def _level_map(container: Any) -> Mapping[str, Any]:
    """A power levels sub-object (``events``, ``users``, ...), or {} if it is none."""
    return container if isinstance(container, Mapping) else {}


def _altered(old_map: Mapping[str, Any], new_map: Mapping[str, Any]
             ) -> Iterator[tuple[str, int | None, int | None]]:
    """(key, old level, new level) for every entry added, changed or removed. Values are
    compared as written ("50" to 50 is a change, as Synapse sees it) and returned
    parsed; a level that is absent or no number at all is None."""
    for key in old_map.keys() | new_map.keys():
        old, new = old_map.get(key, _ABSENT), new_map.get(key, _ABSENT)
        if old is not _ABSENT and new is not _ABSENT and type(old) is type(new) and old == new:
            continue
        yield (key, None if old is _ABSENT else parse_level(old),
               None if new is _ABSENT else parse_level(new))


def _check_power_levels(
    event: Event, auth_state: Mapping[StateKey, Event], create_event: Event, sender_level: Level,
) -> None:
    content = event.content
    version = event.room_version
    if version.integer_power_levels:
        # 9.1 (v10+): the named levels must be integers.
        for key in NAMED_LEVEL_KEYS:
            if key in content and not is_strict_int(content[key]):
                raise AuthError("power levels must be integers")
        # 9.2 (v10+): events and notifications map to integers.
        for key in ("events", "notifications"):
            if key in content:
                value = content[key]
                if not isinstance(value, Mapping) or not all(is_strict_int(v) for v in value.values()):
                    raise AuthError("power levels must be integers")
    # 9.3 (v1-v9: 9.1 / 10.1): users maps valid user ids to integers (v1-v9: or
    # strings that are integers; v1-v5: or floats).
    users = content.get("users", {})
    if not isinstance(users, Mapping):
        raise AuthError("the users of power levels must be an object")
    for user_id, level in users.items():
        if not is_valid_user_id(user_id) or not is_valid_level(level, version):
            raise AuthError("power levels users must map valid user ids to integers")
    # v12 10.4: creators cannot be listed (their power is infinite and fixed).
    if event.room_version.creators_have_infinite_power and get_creators(create_event) & set(users):
        raise AuthError("room creators cannot be given a power level")
    # 9.4: the first power levels event is allowed.
    previous = auth_state.get((POWER_LEVELS, ""))
    if previous is None:
        return
    old = previous.content
    # 9.5: named levels added, changed or removed.
    named_old = {k: old[k] for k in NAMED_LEVEL_KEYS if k in old}
    named_new = {k: content[k] for k in NAMED_LEVEL_KEYS if k in content}
    for _key, old_value, new_value in _altered(named_old, named_new):
        if old_value is not None and old_value > sender_level:
            raise AuthError("cannot change a power level above one's own")
        if new_value is not None and new_value > sender_level:
            raise AuthError("cannot set a power level above one's own")
    # 9.6 / 9.7: events and notifications entries (v1-v5: events only).
    checked = ("events", "notifications") if version.limit_notifications_power_levels else ("events",)
    for key in checked:
        for _name, old_value, new_value in _altered(_level_map(old.get(key)),
                                                    _level_map(content.get(key))):
            if old_value is not None and old_value > sender_level:
                raise AuthError("cannot change a power level above one's own")
            if new_value is not None and new_value > sender_level:
                raise AuthError("cannot set a power level above one's own")
    # 9.8 / 9.9: users entries.
    for user_id, old_value, new_value in _altered(_level_map(old.get("users")), users):
        # 9.8: others' entries at or above one's own level cannot be changed or removed.
        if user_id != event.sender and old_value is not None and old_value >= sender_level:
            raise AuthError("cannot change the power level of a user with at least one's own")
        # 9.9: no one can be raised above one's own level (including oneself).
        if new_value is not None and new_value > sender_level:
            raise AuthError("cannot set a power level above one's own")
    # 9.10: otherwise, allow.


def redaction_allowed(
    redaction: Event, redacted: Event, auth_state: Mapping[StateKey, Event], create_event: Event,
) -> bool:
    """"Handling redactions" (v3+): whether an accepted redaction should be applied to
    ``redacted`` — the redacter has the redact level, or both senders share a domain.
    In v1/v2 auth rule 11 already decided, so an accepted redaction applies.
    ``auth_state`` is the state the redaction was authorised against."""
    if redacted.room_id != redaction.room_id or redaction.redacts != redacted.event_id:
        return False
    if redaction.room_version.redaction_auth_rule:
        return True
    level = get_user_power_level(redaction.sender, auth_state, create_event)
    if level >= get_named_level("redact", auth_state):
        return True
    return domain_of(redaction.sender) == domain_of(redacted.sender)


def check_local_redaction(
    redaction: Event, redacted: Event | None, auth_state: Mapping[StateKey, Event], create_event: Event,
) -> None:
    """Policy for redactions our own users send, on top of :func:`check_auth_rules`: users
    may redact their own events, and others' only with the redact level (the same-domain
    allowance of :func:`redaction_allowed` is for servers, not for users). The create event
    is never redacted. ``redacted`` is None when the target event is unknown."""
    if redacted is not None:
        if redacted.room_id != redaction.room_id:
            raise AuthError("cannot redact an event of another room")
        if redacted.type == CREATE:
            raise AuthError("the create event cannot be redacted")
        if redacted.sender == redaction.sender:
            return
    level = get_user_power_level(redaction.sender, auth_state, create_event)
    if level < get_named_level("redact", auth_state):
        raise AuthError("insufficient power level to redact others' events")

