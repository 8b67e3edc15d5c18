"""Federation scenarios between two running servers, written once against the
client-server API and the public key endpoints, so the same checks run Parley↔Parley
(tests/e2e/test_two_servers.py) and Parley↔Synapse (tests/interop/test_synapse.py).

A "server" here is anything with ``base_url`` (client API, plain HTTP),
``federation_url`` (TLS, test CA) and ``server_name`` (``127.0.0.1:<port>``): both
:class:`tests.interop.rig.FederatedParley` and :class:`tests.interop.rig.SynapseProcess`.
Every scenario is blocking (run it with ``deferToThread``) and bounded in time.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any, Protocol

from signedjson.key import decode_verify_key_bytes, get_verify_key
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from tests.interop.client import MatrixUser, http_json, wait_for

JsonDict = dict[str, Any]

#: The room scenarios (join, messages, invite, leave, catch-up, an encrypted chat) start
#: and restart real processes and take about 90 s per engine, so `make test` leaves them
#: to `make interop` (which sets PARLEY_INTEROP=1); PARLEY_TEST_FEDERATION_JOINS=1 runs
#: them anywhere. Joins over federation between servers in one process are part of
#: `make test` (tests/rest/test_federation_membership.py).
JOINS_MISSING = ("room scenarios across processes run with `make interop` "
                 "(or PARLEY_TEST_FEDERATION_JOINS=1): about 90 s per engine; joins over "
                 "federation in one process run in tests/rest/test_federation_membership.py")


def joins_available() -> bool:
    """Whether to run the room scenarios (join, messages, invite, leave, catch-up)."""
    return (os.environ.get("PARLEY_INTEROP") == "1"
            or os.environ.get("PARLEY_TEST_FEDERATION_JOINS") == "1")


class Server(Protocol):
    base_url: str
    server_name: str

    @property
    def federation_url(self) -> str: ...


def server_keys(server: Server, ca_file: str) -> JsonDict:
    """``GET /_matrix/key/v2/server`` straight from ``server`` over TLS, self-signature
    checked."""
    answer = http_json("GET", server.federation_url + "/_matrix/key/v2/server",
                       ca_file=ca_file)
    assert answer["server_name"] == server.server_name, answer
    _check_signed_by(answer, server.server_name, answer)
    return answer


def _check_signed_by(obj: JsonDict, signer: str, keys_of_signer: JsonDict) -> None:
    sigs = obj.get("signatures", {}).get(signer, {})
    assert sigs, f"no signature of {signer} on {obj!r}"[:1000]
    for kid in sigs:
        b64 = keys_of_signer["verify_keys"][kid]["key"]
        verify_signed_json(obj, signer, decode_verify_key_bytes(kid, decode_base64(b64)))


def notary_query(notary: Server, target: str, ca_file: str,
                 key_ids: list[str] | None = None) -> list[JsonDict]:
    """``POST /_matrix/key/v2/query`` on ``notary`` for ``target``'s ``key_ids`` (none:
    every key; Synapse then answers from its cache only, without fetching)."""
    now = int(time.time() * 1000)
    criteria = {kid: {"minimum_valid_until_ts": now} for kid in key_ids or []}
    answer = http_json("POST", notary.federation_url + "/_matrix/key/v2/query",
                       {"server_keys": {target: criteria}}, ca_file=ca_file)
    return [k for k in answer.get("server_keys", []) if k.get("server_name") == target]


def key_fetch_through_notary(notary: Server, target: Server, ca_file: str) -> None:
    """``notary`` fetches ``target``'s keys over federation TLS and vouches for them:
    the same keys ``target`` serves itself, signed by ``target`` and by ``notary``."""
    own = server_keys(target, ca_file)
    notary_own = server_keys(notary, ca_file)
    found = notary_query(notary, target.server_name, ca_file, list(own["verify_keys"]))
    assert found, f"{notary.server_name} returned no keys for {target.server_name}"
    for entry in found:
        assert entry["verify_keys"] == own["verify_keys"], (entry, own)
        _check_signed_by(entry, target.server_name, own)
        _check_signed_by(entry, notary.server_name, notary_own)


def profiles_across(a: Server, b: Server) -> None:
    """A user's profile on one server, read by a user of the other (both ways)."""
    ua, ub = MatrixUser.register(a.base_url), MatrixUser.register(b.base_url)
    name_a, name_b = f"Ada {secrets.token_hex(3)}", f"Bob {secrets.token_hex(3)}"
    ua.set_displayname(name_a)
    ub.set_displayname(name_b)
    assert ub.profile(ua.user_id).get("displayname") == name_a
    assert ua.profile(ub.user_id).get("displayname") == name_b
    try:
        ua.profile(f"@nobody-{secrets.token_hex(4)}:{b.server_name}")
    except AssertionError as e:
        assert getattr(e, "code", None) == 404, e
    else:
        raise AssertionError("a remote user who does not exist has a profile")


def _check_queried_device(answer: JsonDict, owner: MatrixUser) -> None:
    assert answer.get("failures", {}) == {}, answer
    device = answer["device_keys"][owner.user_id][owner.device_id]
    assert device["keys"][f"ed25519:{owner.device_id}"] == owner.ed25519, device
    verify_signed_json(device, owner.user_id, get_verify_key(owner.signing_key))


def _claimed_key(answer: JsonDict, owner: MatrixUser) -> tuple[str, JsonDict]:
    assert answer.get("failures", {}) == {}, answer
    keys = answer["one_time_keys"].get(owner.user_id, {}).get(owner.device_id, {})
    assert len(keys) == 1, answer
    (kid, key), = keys.items()
    assert kid.startswith("signed_curve25519:"), kid
    verify_signed_json(key, owner.user_id, get_verify_key(owner.signing_key))
    return kid, key


def e2e_keys_across(owner_server: Server, asker_server: Server) -> None:
    """Device keys queried and one-time keys claimed by a user of the other server;
    a device added later shows up at once (device lists are not cached without a
    shared room)."""
    owner = MatrixUser.register(owner_server.base_url)
    asker = MatrixUser.register(asker_server.base_url)
    owner.upload_keys(one_time_keys=2)
    _check_queried_device(asker.keys_query([owner.user_id]), owner)
    first, _ = _claimed_key(asker.keys_claim(owner.user_id, owner.device_id), owner)
    second, _ = _claimed_key(asker.keys_claim(owner.user_id, owner.device_id), owner)
    assert first != second, "the same one-time key was handed out twice"
    counts = owner.upload_keys().get("one_time_key_counts", {})
    assert counts.get("signed_curve25519", 0) == 0, counts

    other = owner.login_new_device()
    other.upload_keys()
    answer = asker.keys_query([owner.user_id])
    assert set(answer["device_keys"][owner.user_id]) == {owner.device_id, other.device_id}, \
        answer


def to_device_across(a: Server, b: Server) -> None:
    """To-device messages both ways (``m.direct_to_device`` EDUs)."""
    ua, ub = MatrixUser.register(a.base_url), MatrixUser.register(b.base_url)
    ua.sync_once(0)
    ub.sync_once(0)
    for sender, receiver in ((ua, ub), (ub, ua)):
        nonce = secrets.token_hex(8)
        sender.send_to_device(receiver.user_id, receiver.device_id, {"nonce": nonce})
        got = receiver.wait_to_device(lambda e, n=nonce: e.get("content", {}).get("nonce") == n)
        assert got["sender"] == sender.user_id, got
        assert got["type"] == "org.parley.interop.ping", got


def to_device_catch_up(a: Server, b: Any) -> None:
    """``b`` is down while ``a`` sends to one of its users; once ``b`` is back (and
    sends ``a`` something, which clears ``a``'s backoff as Synapse does) the queued
    message arrives, once. ``b`` needs ``go_down``/``come_back``."""
    ua, ub = MatrixUser.register(a.base_url), MatrixUser.register(b.base_url)
    ua.sync_once(0)
    ub.sync_once(0)
    b.go_down()
    queued = secrets.token_hex(8)
    ua.send_to_device(ub.user_id, ub.device_id, {"nonce": queued})
    time.sleep(1.0)  # let the first attempt fail while b is down
    b.come_back()
    hello = secrets.token_hex(8)
    ub.send_to_device(ua.user_id, ua.device_id, {"nonce": hello})
    ua.wait_to_device(lambda e: e.get("content", {}).get("nonce") == hello)
    got = ub.wait_to_device(lambda e: e.get("content", {}).get("nonce") == queued)
    assert got["sender"] == ua.user_id, got
    time.sleep(1.0)
    again = ub.sync_once(0).get("to_device", {}).get("events", [])
    assert not [e for e in again if e.get("content", {}).get("nonce") == queued], \
        "the queued message was delivered twice"


# -- rooms (skipped until joins over federation exist) -----------------------------------


def _membership_of(user_id: str, membership: str) -> Any:
    return lambda e: (e.get("type") == "m.room.member" and e.get("state_key") == user_id
                      and e.get("content", {}).get("membership") == membership)


def _body_is(text: str) -> Any:
    return lambda e: e.get("content", {}).get("body") == text


def room_across(host: Server, guest: Server) -> tuple[MatrixUser, MatrixUser, str]:
    """A user of ``guest`` joins a public room of ``host`` by id (``server_name``
    hint); messages both ways through ``/sync``; an invite of another ``guest`` user,
    accepted; the first guest leaves. Returns (host user, guest user, room) with the
    guest user joined again, for follow-up scenarios."""
    alice = MatrixUser.register(host.base_url)
    bob = MatrixUser.register(guest.base_url)
    room = alice.create_room(preset="public_chat", name="interop room")
    alice.sync_once(0)
    bob.sync_once(0)
    assert bob.join(room, via=[host.server_name]) == room
    alice.wait_timeline(room, _membership_of(bob.user_id, "join"))
    wait_for("both users joined on the host",
             lambda: {alice.user_id, bob.user_id} <= alice.joined_members(room))
    for sender, receiver in ((alice, bob), (bob, alice)):
        text = f"hello from {sender.user_id} {secrets.token_hex(4)}"
        event_id = sender.send_text(room, text)
        got = receiver.wait_timeline(room, _body_is(text))
        assert got["event_id"] == event_id and got["sender"] == sender.user_id, got

    carol = MatrixUser.register(guest.base_url)
    carol.sync_once(0)
    alice.invite(room, carol.user_id)
    carol.wait_invite(room)
    assert carol.join(room, via=[host.server_name]) == room
    alice.wait_timeline(room, _membership_of(carol.user_id, "join"))

    bob.leave(room)
    alice.wait_timeline(room, _membership_of(bob.user_id, "leave"))
    assert bob.user_id not in alice.joined_members(room)
    assert bob.join(room, via=[host.server_name]) == room
    alice.wait_timeline(room, _membership_of(bob.user_id, "join"))
    return alice, bob, room


def room_catch_up(host: Server, guest: Any) -> None:
    """``guest`` is down while the room moves on; when it is back (and its user
    speaks, which wakes ``host``'s queue for it), it receives what it missed."""
    alice, bob, room = room_across(host, guest)
    guest.go_down()
    missed = f"while you were away {secrets.token_hex(4)}"
    alice.send_text(room, missed)
    time.sleep(1.0)
    guest.come_back()
    back = f"back {secrets.token_hex(4)}"
    bob.send_text(room, back)
    alice.wait_timeline(room, _body_is(back))
    bob.wait_timeline(room, _body_is(missed))
