"""Bulk evaluation of the server-default push rules (homeserver/push/bulk.py) gives
every member exactly what the per-user evaluator gives over ``default_rules``."""

from __future__ import annotations

import random
from typing import Any

from twisted.trial import unittest

from homeserver.push.bulk import evaluate_defaults
from homeserver.push.default_rules import default_rules
from homeserver.push.evaluator import NO_MATCH, PushContext, evaluate

ROOM = "!room:example.org"
# Ids and display names chosen to hit the per-user rules' edge cases: case, glob
# characters, non-ASCII (wider case folding), regex metacharacters, empty names.
MEMBERS: dict[str, str | None] = {
    "@alice:example.org": "Alice Liddell",
    "@bob:example.org": None,
    "@carol:example.org": "",
    "@Dave:example.org": "dave",
    "@eve.x:example.org": "E.V.E (admin)",
    "@st*r:example.org": "st?r",
    "@qu?z:example.org": "Quiz*",
    "@kelvin:example.org": "\u212aelvin",  # KELVIN SIGN folds to k
    "@\u00e9mile:example.org": "\u00c9mile",
    "@long_s:example.org": "lo\u017fs",  # LATIN SMALL LETTER LONG S folds to s
    "@frank:other.org": "Frank",
    "@:example.org": "nobody",
    "@grace:example.org": "alice",  # shares a word with another member's name
}
SENDER = "@sender:example.org"


def msg(body: Any = "hello", sender: str = SENDER, etype: str = "m.room.message",
        **content: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"msgtype": "m.text", **content}
    if body is not None:
        c["body"] = body
    return {"type": etype, "sender": sender, "room_id": ROOM, "event_id": "$e", "content": c}


def state(etype: str, key: str, sender: str = SENDER, **content: Any) -> dict[str, Any]:
    return {"type": etype, "state_key": key, "sender": sender, "room_id": ROOM,
            "event_id": "$s", "content": content}


def fixed_events() -> list[dict[str, Any]]:
    mentions = "m.mentions"
    return [
        msg(), msg("hi alice"), msg("Hi ALICE!"), msg("alice liddell, lunch?"),
        msg("ALICE LIDDELL"), msg("dave?"), msg("DAVE"), msg("st?r and st*r"), msg("quiz*"),
        msg("kelvin"), msg("\u212aELVIN"), msg("KELVIN"), msg("emile \u00e9mile \u00c9MILE"),
        msg("loss loſs LOSS"), msg("e.v.e (admin) said"), msg("eve.x"), msg("frank"),
        msg("@room hello"), msg("@ROOM"), msg("nobody"), msg(""), msg(None), msg(42),
        msg("hello", msgtype="m.notice"), msg("alice", msgtype="m.notice"),
        msg("hi", **{mentions: {"user_ids": ["@alice:example.org", "@Dave:example.org"]}}),
        msg("alice", **{mentions: {}}), msg("@room", **{mentions: {"room": True}}),
        msg("x", **{mentions: {"room": "true"}}),
        msg("x", **{mentions: {"user_ids": ["@ALICE:example.org", 7, None, ["@bob:example.org"]]}}),
        msg("x", **{mentions: {"user_ids": "@alice:example.org"}}),
        msg("x", **{mentions: {"user_ids": ["@frank:other.org", "@st*r:example.org"]}}),
        msg("x", **{mentions: {"user_ids": [SENDER]}}),
        msg("alice", sender="@alice:example.org"),
        msg("hi", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}),
        msg("hi alice", etype="m.room.encrypted"), msg("hi", etype="m.call.invite"),
        msg("hi", etype="m.reaction"), msg("hi", etype="m.room.encrypted"),
        state("m.room.member", "@alice:example.org", membership="invite"),
        state("m.room.member", "@ALICE:example.org", membership="invite"),
        state("m.room.member", "@stXr:example.org", membership="invite"),
        state("m.room.member", "@qu?z:example.org", membership="invite"),
        state("m.room.member", "@\u00c9mile:example.org", membership="invite"),
        state("m.room.member", "@bob:example.org", membership="join"),
        state("m.room.member", "@new:example.org", membership="invite"),
        state("m.room.member", SENDER, membership="join"),
        state("m.room.tombstone", "", body="moved"), state("m.room.tombstone", "x"),
        state("m.room.server_acl", ""), state("org.example.custom", "k1", n=1, body="alice"),
        state("m.room.name", "", name="alice"),
        {"type": "m.room.message", "sender": SENDER, "room_id": ROOM, "event_id": "$n"},
        {"type": "m.room.message", "sender": SENDER, "room_id": ROOM, "content": "text"},
    ]


def random_event(rng: random.Random) -> dict[str, Any]:
    words = ["alice", "Alice", "liddell", "DAVE", "st*r", "st?r", "quiz", "e.v.e", "(admin)",
             "@room", "frank", "kelvin", "\u212aelvin", "\u00e9mile", "lo\u017fs", "loss", "hi",
             "nobody", "eve", "x", "_", "-", "!", ",", ""]
    body = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
    if rng.random() < 0.5:
        body = rng.choice(["", ".", "_"]).join(body.split(" "))
    content: dict[str, Any] = {"msgtype": rng.choice(["m.text", "m.notice", "m.emote"])}
    if rng.random() < 0.9:
        content["body"] = body
    if rng.random() < 0.3:
        content["m.mentions"] = {k: v for k, v in (
            ("user_ids", rng.sample(sorted(MEMBERS), rng.randint(0, 3))),
            ("room", rng.choice([True, False, None]))) if rng.random() < 0.7}
    etype = rng.choice(["m.room.message", "m.room.message", "m.room.encrypted",
                        "m.call.invite", "m.reaction"])
    sender = rng.choice([SENDER, *MEMBERS])
    return {"type": etype, "sender": sender, "room_id": ROOM, "event_id": "$r",
            "content": content}


class BulkMatchesPerUserTest(unittest.TestCase):
    def check(self, event: dict[str, Any], member_count: int | None, level: int | None,
              notifications: dict[str, int]) -> None:
        bulk = evaluate_defaults(event, MEMBERS, member_count, level, notifications)
        for user_id, name in MEMBERS.items():
            ctx = PushContext(user_id=user_id, member_count=member_count, display_name=name,
                              sender_power_level=level, notification_power_levels=notifications)
            expected = evaluate(default_rules(user_id), event, ctx)
            self.assertEqual(bulk.get(user_id), expected, (user_id, event, member_count, level))

    def test_fixed_events_and_room_contexts(self) -> None:
        for event in fixed_events():
            for count in (None, 1, 2, 3, 40):
                for level, notifications in ((None, {}), (0, {}), (50, {}), (100, {"room": 100}),
                                             (10, {"room": 5})):
                    self.check(event, count, level, notifications)

    def test_random_events(self) -> None:
        rng = random.Random(1818)
        for _ in range(1500):
            self.check(random_event(rng), rng.choice([1, 2, 3, 10]), rng.choice([None, 0, 50, 100]),
                       rng.choice([{}, {"room": 0}, {"room": 75}]))

    def test_outcomes_the_bench_relies_on(self) -> None:
        """Shapes, not just agreement: state events notify nobody, an invite only the
        invitee (case-insensitively, as the glob does), a mention only who is named."""
        custom = evaluate_defaults(state("org.example.custom", "k", n=1), MEMBERS, 40, 0, {})
        self.assertEqual((custom.rest, custom.users), (NO_MATCH, {}))
        join = evaluate_defaults(state("m.room.member", "@z:example.org", membership="join"),
                                 MEMBERS, 40, 0, {})
        self.assertFalse(join.rest.notify)
        self.assertEqual(join.rest.rule_id, ".m.rule.member_event")
        invite = evaluate_defaults(state("m.room.member", "@ALICE:example.org",
                                         membership="invite"), MEMBERS, 40, 0, {})
        self.assertEqual(set(invite.users), {"@alice:example.org"})
        self.assertEqual(invite.users["@alice:example.org"].rule_id, ".m.rule.invite_for_me")
        mention = evaluate_defaults(msg("x", **{"m.mentions": {"user_ids": ["@bob:example.org"]}}),
                                    MEMBERS, 40, 0, {})
        self.assertEqual(set(mention.users), {"@bob:example.org"})
        self.assertTrue(mention.users["@bob:example.org"].highlight)
        self.assertEqual(mention.rest.rule_id, ".m.rule.message")
        own = evaluate_defaults(msg("alice", sender="@alice:example.org"), MEMBERS, 40, 0, {})
        self.assertIs(own.get("@alice:example.org"), NO_MATCH)
        self.assertTrue(own.get("@grace:example.org").highlight)  # "alice" is her name

    def test_empty_candidates(self) -> None:
        bulk = evaluate_defaults(msg("hi"), {}, 1, 0, {})
        self.assertEqual(bulk.users, {})
        self.assertEqual(bulk.rest.rule_id, ".m.rule.message")
