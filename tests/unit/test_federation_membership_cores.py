"""Cores of federation membership: co-signing keeps an event's id and adds a signature
that verifies; a make_* template is checked before it is filled in and signed."""

from __future__ import annotations

from twisted.trial import unittest

from federation.membership import cosign
from federation.pdu_checks import verify_with_key
from federation.remote_join import RemoteMembership
from homeserver.events.hashing import compute_event_id
from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.events.signing import generate_signing_key, key_id, sign_event
from homeserver.http.errors import MatrixError

ROOM = "!room:a.test"
USER = "@u:b.test"


def _pdu() -> dict:
    return {"room_id": ROOM, "type": "m.room.member", "state_key": USER, "sender": USER,
            "content": {"membership": "join", "join_authorised_via_users_server": "@x:a.test"},
            "origin_server_ts": 5, "depth": 3, "prev_events": ["$p"], "auth_events": ["$a"]}


class CosignTest(unittest.TestCase):
    def test_cosign_keeps_id_and_adds_valid_signature(self) -> None:
        version = get_room_version("10")
        assert version is not None
        theirs = generate_signing_key("t")
        ours = generate_signing_key("o")
        signed = sign_event(_pdu(), "b.test", theirs, version)
        eid = compute_event_id(signed, version)
        both = cosign(signed, "a.test", ours, version)
        self.assertEqual(compute_event_id(both, version), eid)
        self.assertEqual(set(both["signatures"]), {"a.test", "b.test"})
        self.assertNotIn("a.test", signed["signatures"])  # the input is left alone
        event = Event(eid, both, version)
        self.assertTrue(verify_with_key(event, "a.test", key_id(ours), ours.verify_key))
        self.assertTrue(verify_with_key(event, "b.test", key_id(theirs), theirs.verify_key))
        # A change to the content afterwards breaks our signature.
        event.pdu["content"]["membership"] = "leave"
        self.assertFalse(verify_with_key(event, "a.test", key_id(ours), ours.verify_key))


class TemplateTest(unittest.TestCase):
    def check(self, answer: object, kind: str = "join") -> None:
        RemoteMembership._check_template(kind, USER, ROOM, answer)  # noqa: SLF001

    def test_good_template(self) -> None:
        version, template = RemoteMembership._check_template(  # noqa: SLF001
            "join", USER, ROOM, {"room_version": "11", "event": _pdu()})
        self.assertEqual(version.identifier, "11")
        self.assertEqual(template["state_key"], USER)

    def test_bad_templates(self) -> None:
        for bad in (None, [], {"event": "x"}, {"room_version": "10", "event": {
                **_pdu(), "room_id": "!other:a.test"}},
                {"room_version": "10", "event": {**_pdu(), "sender": "@z:b.test"}},
                {"room_version": "10", "event": {**_pdu(), "state_key": "@z:b.test"}},
                {"room_version": "10", "event": {**_pdu(), "type": "m.room.message"}},
                {"room_version": "10", "event": {**_pdu(), "content": []}}):
            with self.assertRaises(MatrixError, msg=repr(bad)):
                self.check(bad)
        with self.assertRaises(MatrixError):
            self.check({"room_version": "10", "event": _pdu()}, "knock")  # not a knock
        with self.assertRaises(MatrixError) as cm:
            self.check({"room_version": "999", "event": _pdu()})
        self.assertEqual(cm.exception.errcode, "M_INCOMPATIBLE_ROOM_VERSION")
