"""The pure push rule evaluator and the predefined rules."""

from __future__ import annotations

import random
import re
import time
from typing import Any

from twisted.trial import unittest

from homeserver.push.default_rules import DEFAULT_RULE_KINDS, KINDS, default_rules, localpart_of
from homeserver.push.evaluator import (
    PushContext,
    condition_matches,
    contains_words,
    evaluate,
    glob_matches,
    interpret_actions,
    lookup,
    scalar_equal,
    split_key,
)

ALICE = "@alice:example.org"
BOB = "@bob:example.org"
ROOM = "!room:example.org"


def message(body: str = "hello", sender: str = BOB, **content: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": sender, "room_id": ROOM,
            "event_id": "$e", "content": {"msgtype": "m.text", "body": body, **content}}


def ctx(**kw: Any) -> PushContext:
    base: dict[str, Any] = {"user_id": ALICE, "member_count": 5, "display_name": "Alice Liddell",
                            "sender_power_level": 0, "notification_power_levels": {}}
    base.update(kw)
    return PushContext(**base)


def ruleset(user_id: str = ALICE, **extra: list[dict[str, Any]]) -> dict[str, Any]:
    rules = default_rules(user_id)
    for kind, own in extra.items():
        first = [r for r in rules[kind] if r["rule_id"] == ".m.rule.master"]
        rest = [r for r in rules[kind] if r["rule_id"] != ".m.rule.master"]
        rules[kind] = first + own + rest
    return rules


def _reference(pattern: str, value: str, word: bool) -> bool:
    """Every candidate substring against a backtracking regex (fine for tiny inputs)."""
    rx = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                            for c in pattern), re.IGNORECASE | re.DOTALL)
    if not word:
        return rx.fullmatch(value) is not None

    def boundary_char(i: int) -> bool:
        return not (value[i].isascii() and (value[i].isalnum() or value[i] == "_"))

    n = len(value)
    return any(rx.fullmatch(value, i, j) is not None
               for i in range(n + 1) if i == 0 or boundary_char(i - 1)
               for j in range(i, n + 1) if j == n or boundary_char(j))


def cond(kind: str, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, **kw}


class GlobTest(unittest.TestCase):
    def test_whole_value(self) -> None:
        self.assertTrue(glob_matches("lunc?*", "Lunch plans"))
        self.assertTrue(glob_matches("lunc?*", "LUNCH"))
        self.assertFalse(glob_matches("lunc?*", " lunch"))
        self.assertFalse(glob_matches("lunc?*", "lunc"))
        self.assertTrue(glob_matches("m.room.message", "m.room.message"))
        self.assertFalse(glob_matches("m.room.message", "m.room.message.extra"))
        self.assertFalse(glob_matches("m.room.message", "xm.room.message"))

    def test_star_and_question_mark(self) -> None:
        self.assertTrue(glob_matches("*", ""))
        self.assertTrue(glob_matches("*", "anything"))
        self.assertTrue(glob_matches("a*b*c", "abc"))
        self.assertTrue(glob_matches("a*b*c", "a-b-b-c"))
        self.assertFalse(glob_matches("a*b*c", "a-b-b-c-"))
        self.assertTrue(glob_matches("a**c", "ac"))
        self.assertTrue(glob_matches("?", "x"))
        self.assertFalse(glob_matches("?", ""))
        self.assertFalse(glob_matches("?", "xy"))
        self.assertTrue(glob_matches("*abc", "abcabc"))
        self.assertFalse(glob_matches("ab*ba", "aba"))  # segments may not overlap

    def test_regex_characters_are_literal(self) -> None:
        self.assertTrue(glob_matches("a.b", "a.b"))
        self.assertFalse(glob_matches("a.b", "axb"))
        self.assertFalse(glob_matches("[ab]", "a"))
        self.assertTrue(glob_matches("[ab]", "[AB]"))
        self.assertTrue(glob_matches("(x)+", "(x)+"))

    def test_empty_pattern_matches_only_empty(self) -> None:
        self.assertTrue(glob_matches("", ""))
        self.assertFalse(glob_matches("", "x"))

    def test_word_boundaries_in_body(self) -> None:
        self.assertTrue(glob_matches("ex*ple", "An example event.", word=True))
        self.assertTrue(glob_matches("ex*ple", "exple", word=True))
        self.assertTrue(glob_matches("ex*ple", "An exciting triple-whammy", word=True))
        self.assertFalse(glob_matches("ex*ple", "An examples", word=True))
        self.assertTrue(glob_matches("cake", "I like cake!", word=True))
        self.assertTrue(glob_matches("cake", "CAKE", word=True))
        self.assertFalse(glob_matches("cake", "cupcake", word=True))
        self.assertFalse(glob_matches("cake", "cakes", word=True))
        self.assertFalse(glob_matches("cake", "cake_", word=True))  # _ is a word character
        self.assertTrue(glob_matches("cake", "é cake é", word=True))
        self.assertTrue(glob_matches("@room", "hey @room, look", word=True))
        self.assertFalse(glob_matches("@room", "hey @roomy", word=True))
        self.assertTrue(glob_matches("c?ke", "coke and cake", word=True))
        self.assertTrue(glob_matches("*", "anything", word=True))
        self.assertTrue(glob_matches("cake*", "cakes galore", word=True))
        self.assertFalse(glob_matches("cake*", "cupcakes", word=True))
        self.assertTrue(glob_matches("*lie", "the cake is a lie", word=True))
        self.assertFalse(glob_matches("*lie", "the cake is a lies", word=True))

    def test_word_mode_picks_a_later_candidate(self) -> None:
        # The first occurrence is not at a boundary; a later one is.
        self.assertTrue(glob_matches("cake*lie", "cupcake then cake, a lie", word=True))
        self.assertTrue(glob_matches("a*z", "ab az", word=True))
        self.assertTrue(glob_matches("a*z", "ab azz", word=True))  # "azz": * is "z"
        self.assertFalse(glob_matches("a*z", "ab azy", word=True))

    def test_adversarial_pattern_is_fast(self) -> None:
        body = "a" * 60000 + "b"
        start = time.monotonic()
        self.assertFalse(glob_matches("a*a*a*a*a*a*a*a*c", body, word=True))
        self.assertFalse(glob_matches("*a*a*a*a*a*a*a*a*c", body))
        self.assertFalse(glob_matches("?*?*?*?*?*c", body, word=True))
        self.assertLess(time.monotonic() - start, 1.0)

    def test_agrees_with_a_brute_force_reference(self) -> None:
        rng = random.Random(1234)
        for _ in range(3000):
            pattern = "".join(rng.choice("ab*?-") for _ in range(rng.randint(0, 6)))
            value = "".join(rng.choice("abAB- _") for _ in range(rng.randint(0, 10)))
            for word in (False, True):
                self.assertEqual(glob_matches(pattern, value, word),
                                 _reference(pattern, value, word), (pattern, value, word))

    def test_contains_words_is_literal(self) -> None:
        self.assertTrue(contains_words("hi Alice Liddell!", "alice liddell"))
        self.assertFalse(contains_words("hi Alice Liddells", "Alice Liddell"))
        self.assertFalse(contains_words("anything", "*"))
        self.assertTrue(contains_words("ping *", "*"))
        self.assertFalse(contains_words("anything", ""))


class PathTest(unittest.TestCase):
    def test_split_key_escapes(self) -> None:
        self.assertEqual(split_key("content.body"), ["content", "body"])
        self.assertEqual(split_key(r"content.m\.mentions.room"), ["content", "m.mentions", "room"])
        self.assertEqual(split_key(r"a\\.b"), ["a\\", "b"])
        self.assertEqual(split_key(r"a\\\.b"), ["a\\.b"])
        self.assertEqual(split_key(r"a\b"), ["a\\b"])  # a lone backslash is literal
        self.assertEqual(split_key("a..b"), ["a", "", "b"])
        self.assertEqual(split_key("trailing\\"), ["trailing\\"])

    def test_lookup(self) -> None:
        event = {"content": {"m.relates_to": {"rel_type": "m.replace"}, "a": {"b": 1},
                             "m": {"relates_to": "nested"}, "list": [1]}}
        self.assertEqual(lookup(event, r"content.m\.relates_to.rel_type"), "m.replace")
        self.assertEqual(lookup(event, "content.m.relates_to"), "nested")
        self.assertEqual(lookup(event, "content.a.b"), 1)
        self.assertNotIn(lookup(event, "content.list.0"), (1, [1]))
        self.assertNotIn(lookup(event, "content.missing"), (None,))


class ConditionTest(unittest.TestCase):
    def test_event_match_needs_a_string(self) -> None:
        c = cond("event_match", key="content.n", pattern="*")
        self.assertFalse(condition_matches(c, {"content": {"n": 1}}, ctx()))
        self.assertFalse(condition_matches(c, {"content": {"n": None}}, ctx()))
        self.assertFalse(condition_matches(c, {"content": {}}, ctx()))
        self.assertTrue(condition_matches(c, {"content": {"n": ""}}, ctx()))

    def test_event_match_on_body_uses_word_boundaries(self) -> None:
        c = cond("event_match", key="content.body", pattern="beer")
        self.assertTrue(condition_matches(c, message("time for beer?"), ctx()))
        self.assertFalse(condition_matches(c, message("beers"), ctx()))
        topic = cond("event_match", key="content.topic", pattern="beer")
        self.assertFalse(condition_matches(topic, {"content": {"topic": "beer time"}}, ctx()))

    def test_event_property_is(self) -> None:
        federate = cond("event_property_is", key=r"content.m\.federate", value=True)
        self.assertTrue(condition_matches(federate, {"content": {"m.federate": True}}, ctx()))
        self.assertFalse(condition_matches(federate, {"content": {"m.federate": "true"}}, ctx()))
        self.assertFalse(condition_matches(federate, {"content": {"m.federate": 1}}, ctx()))
        self.assertFalse(condition_matches(federate, {"content": {}}, ctx()))
        one = cond("event_property_is", key="content.n", value=1)
        self.assertFalse(condition_matches(one, {"content": {"n": True}}, ctx()))
        self.assertFalse(condition_matches(one, {"content": {"n": 1.0}}, ctx()))
        self.assertTrue(condition_matches(one, {"content": {"n": 1}}, ctx()))
        null = cond("event_property_is", key="content.n", value=None)
        self.assertTrue(condition_matches(null, {"content": {"n": None}}, ctx()))
        self.assertFalse(condition_matches(null, {"content": {}}, ctx()))
        self.assertFalse(condition_matches(cond("event_property_is", key="content.n"),
                                           {"content": {"n": None}}, ctx()))
        compound = cond("event_property_is", key="content.n", value=[1])
        self.assertFalse(condition_matches(compound, {"content": {"n": [1]}}, ctx()))

    def test_event_property_contains(self) -> None:
        c = cond("event_property_contains", key="content.alt_aliases", value="#myroom:example.com")
        ok = {"content": {"alt_aliases": ["#somewhere:example.org", "#myroom:example.com"]}}
        self.assertTrue(condition_matches(c, ok, ctx()))
        self.assertFalse(condition_matches(c, {"content": {"alt_aliases": [":example.com"]}}, ctx()))
        self.assertFalse(condition_matches(c, {"content": {"alt_aliases": "#myroom:example.com"}},
                                           ctx()))
        nums = cond("event_property_contains", key="content.n", value=1)
        self.assertFalse(condition_matches(nums, {"content": {"n": [True, [1], {"a": 1}]}}, ctx()))
        self.assertTrue(condition_matches(nums, {"content": {"n": [True, 1]}}, ctx()))

    def test_contains_display_name(self) -> None:
        c = cond("contains_display_name")
        self.assertTrue(condition_matches(c, message("hi alice liddell"), ctx()))
        self.assertFalse(condition_matches(c, message("hi Alice Liddells"), ctx()))
        self.assertFalse(condition_matches(c, message("hi Alice"), ctx()))
        self.assertFalse(condition_matches(c, message("hi"), ctx(display_name=None)))
        self.assertFalse(condition_matches(c, message("hi"), ctx(display_name="")))
        self.assertTrue(condition_matches(c, message("ping A.*?"), ctx(display_name="A.*?")))
        self.assertFalse(condition_matches(c, message("ping Ab"), ctx(display_name="A?")))
        self.assertFalse(condition_matches(c, {"content": {"body": 5}}, ctx()))

    def test_room_member_count(self) -> None:
        cases = [("2", 2, True), ("2", 3, False), ("==2", 2, True), ("<2", 1, True),
                 ("<2", 2, False), (">2", 3, True), (">2", 2, False), ("<=2", 2, True),
                 ("<=2", 3, False), (">=10", 10, True), (">=10", 9, False)]
        for spec, count, expected in cases:
            c = cond("room_member_count", **{"is": spec})
            self.assertEqual(condition_matches(c, message(), ctx(member_count=count)), expected,
                             (spec, count))
        for bad in ("", "=2", "!=2", "2.5", "-1", " 2", "abc", 2):
            c = cond("room_member_count", **{"is": bad})
            self.assertFalse(condition_matches(c, message(), ctx(member_count=2)), bad)
        unknown = cond("room_member_count", **{"is": "2"})
        self.assertFalse(condition_matches(unknown, message(), ctx(member_count=None)))

    def test_sender_notification_permission(self) -> None:
        c = cond("sender_notification_permission", key="room")
        self.assertFalse(condition_matches(c, message(), ctx(sender_power_level=0)))
        self.assertTrue(condition_matches(c, message(), ctx(sender_power_level=50)))
        self.assertTrue(condition_matches(c, message(), ctx(
            sender_power_level=10, notification_power_levels={"room": 10})))
        self.assertFalse(condition_matches(c, message(), ctx(
            sender_power_level=99, notification_power_levels={"room": 100})))
        self.assertFalse(condition_matches(c, message(), ctx(sender_power_level=None)))

    def test_unknown_and_malformed_conditions_never_match(self) -> None:
        for c in (cond("org.example.future"), {"key": "type"}, "event_match", None,
                  cond("event_match", key="type"), cond("event_match", pattern="*"),
                  cond("event_match", key=5, pattern="*")):
            self.assertFalse(condition_matches(c, message(), ctx()), c)

    def test_scalar_equal(self) -> None:
        self.assertTrue(scalar_equal("a", "a"))
        self.assertFalse(scalar_equal(True, 1))
        self.assertFalse(scalar_equal(2**60, 2**60))  # outside canonical JSON's range


class ActionsTest(unittest.TestCase):
    def test_interpret(self) -> None:
        self.assertEqual(interpret_actions([]), (False, False, None))
        self.assertEqual(interpret_actions(["notify"]), (True, False, None))
        self.assertEqual(interpret_actions(["notify", {"set_tweak": "highlight"}]), (True, True, None))
        self.assertEqual(interpret_actions(["notify", {"set_tweak": "highlight", "value": False}]),
                         (True, False, None))
        self.assertEqual(interpret_actions(["notify", {"set_tweak": "sound", "value": "ring"}]),
                         (True, False, "ring"))
        # Highlight and sound only mean something for a notification; legacy no-ops.
        self.assertEqual(interpret_actions([{"set_tweak": "highlight"}]), (False, False, None))
        self.assertEqual(interpret_actions(["dont_notify", "coalesce"]), (False, False, None))


class DefaultRulesTest(unittest.TestCase):
    def test_shape_and_order(self) -> None:
        rules = default_rules(ALICE)
        self.assertEqual(list(rules), list(KINDS))
        self.assertEqual([r["rule_id"] for r in rules["override"]], [
            ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
            ".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.contains_display_name",
            ".m.rule.is_room_mention", ".m.rule.roomnotif", ".m.rule.tombstone",
            ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits",
        ])
        self.assertEqual([r["rule_id"] for r in rules["underride"]], [
            ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
            ".m.rule.message", ".m.rule.encrypted",
        ])
        self.assertEqual(rules["content"], [{
            "rule_id": ".m.rule.contains_user_name", "default": True, "enabled": True,
            "pattern": "alice",
            "actions": ["notify", {"set_tweak": "sound", "value": "default"},
                        {"set_tweak": "highlight"}],
        }])
        for kind in KINDS:
            for rule in rules[kind]:
                self.assertTrue(rule["default"])
                self.assertEqual(rule["enabled"], rule["rule_id"] != ".m.rule.master")
                self.assertEqual(DEFAULT_RULE_KINDS[rule["rule_id"]], kind)

    def test_user_specific_parts(self) -> None:
        rules = default_rules("@carol:other.example")
        invite = next(r for r in rules["override"] if r["rule_id"] == ".m.rule.invite_for_me")
        self.assertIn({"kind": "event_match", "key": "state_key", "pattern": "@carol:other.example"},
                      invite["conditions"])
        mention = next(r for r in rules["override"] if r["rule_id"] == ".m.rule.is_user_mention")
        self.assertEqual(mention["conditions"][0]["value"], "@carol:other.example")
        self.assertEqual(localpart_of("@carol:other.example"), "carol")

    def test_copies_are_independent(self) -> None:
        first = default_rules(ALICE)
        first["override"][0]["enabled"] = True
        first["override"][1]["actions"].append("notify")
        self.assertFalse(default_rules(ALICE)["override"][0]["enabled"])
        self.assertEqual(default_rules(ALICE)["override"][1]["actions"], [])


class EvaluateDefaultsTest(unittest.TestCase):
    """What the predefined rules decide for typical events."""

    def check(self, event: dict[str, Any], rule_id: str | None, notify: bool, highlight: bool,
              rules: dict[str, Any] | None = None, **kw: Any) -> None:
        result = evaluate(rules or ruleset(), event, ctx(**kw))
        self.assertEqual((result.rule_id, result.notify, result.highlight),
                         (rule_id, notify, highlight))

    def test_one_to_one_message(self) -> None:
        self.check(message(), ".m.rule.room_one_to_one", True, False, member_count=2)
        result = evaluate(ruleset(), message(), ctx(member_count=2))
        self.assertEqual(result.sound, "default")
        self.assertEqual(result.kind, "underride")

    def test_group_message(self) -> None:
        self.check(message(), ".m.rule.message", True, False, member_count=5)
        self.assertIsNone(evaluate(ruleset(), message(), ctx()).sound)

    def test_mentions(self) -> None:
        mention = message("hey", **{"m.mentions": {"user_ids": [ALICE]}})
        self.check(mention, ".m.rule.is_user_mention", True, True)
        self.check(message("hey alice!"), ".m.rule.contains_user_name", True, True,
                   display_name="Queen")
        self.check(message("hey Alice Liddell"), ".m.rule.contains_display_name", True, True)
        other = message("hey", **{"m.mentions": {"user_ids": [BOB]}})
        self.check(other, ".m.rule.message", True, False)

    def test_m_mentions_disables_legacy_rules(self) -> None:
        event = message("hey alice and Alice Liddell, @room", **{"m.mentions": {}})
        self.check(event, ".m.rule.message", True, False, sender_power_level=100)

    def test_room_mention(self) -> None:
        event = message("everyone!", **{"m.mentions": {"room": True}})
        self.check(event, ".m.rule.is_room_mention", True, True, sender_power_level=50)
        self.check(event, ".m.rule.message", True, False, sender_power_level=0)
        self.check(message("@room hi"), ".m.rule.roomnotif", True, True, sender_power_level=50)
        self.check(message("@room hi"), ".m.rule.message", True, False, sender_power_level=49)

    def test_encrypted(self) -> None:
        event = {"type": "m.room.encrypted", "sender": BOB, "room_id": ROOM,
                 "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}}
        self.check(event, ".m.rule.encrypted_room_one_to_one", True, False, member_count=2)
        self.check(event, ".m.rule.encrypted", True, False, member_count=3)

    def test_suppressed(self) -> None:
        self.check(message("beep", msgtype="m.notice"), ".m.rule.suppress_notices", False, False)
        reaction = {"type": "m.reaction", "sender": BOB, "room_id": ROOM,
                    "content": {"m.relates_to": {"rel_type": "m.annotation", "key": "👍"}}}
        self.check(reaction, ".m.rule.reaction", False, False)
        edit = message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
        self.check(edit, ".m.rule.suppress_edits", False, False, member_count=2)
        join = {"type": "m.room.member", "sender": BOB, "state_key": BOB, "room_id": ROOM,
                "content": {"membership": "join"}}
        self.check(join, ".m.rule.member_event", False, False)
        acl = {"type": "m.room.server_acl", "sender": BOB, "state_key": "", "room_id": ROOM,
               "content": {}}
        self.check(acl, ".m.rule.room.server_acl", False, False)

    def test_edit_that_mentions_still_highlights(self) -> None:
        edit = message("* hi", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"},
                                  "m.mentions": {"user_ids": [ALICE]}})
        self.check(edit, ".m.rule.is_user_mention", True, True)

    def test_invite_tombstone_call(self) -> None:
        invite = {"type": "m.room.member", "sender": BOB, "state_key": ALICE, "room_id": ROOM,
                  "content": {"membership": "invite"}}
        self.check(invite, ".m.rule.invite_for_me", True, False)
        other = dict(invite, state_key="@carol:example.org")
        self.check(other, ".m.rule.member_event", False, False)
        tomb = {"type": "m.room.tombstone", "sender": BOB, "state_key": "", "room_id": ROOM,
                "content": {"body": "moved", "replacement_room": "!new:example.org"}}
        self.check(tomb, ".m.rule.tombstone", True, True)
        not_state = {k: v for k, v in tomb.items() if k != "state_key"}
        self.check(not_state, None, False, False)
        call = {"type": "m.call.invite", "sender": BOB, "room_id": ROOM, "content": {}}
        result = evaluate(ruleset(), call, ctx())
        self.assertEqual((result.rule_id, result.notify, result.sound), (".m.rule.call", True, "ring"))

    def test_own_events_never_notify(self) -> None:
        event = message("alice", sender=ALICE, **{"m.mentions": {"user_ids": [ALICE]}})
        self.check(event, None, False, False)

    def test_unmatched_event(self) -> None:
        self.check({"type": "m.room.topic", "sender": BOB, "state_key": "", "content": {}},
                   None, False, False)

    def test_master_rule_silences_everything(self) -> None:
        rules = ruleset()
        rules["override"][0]["enabled"] = True
        self.check(message("alice", **{"m.mentions": {"user_ids": [ALICE]}}), ".m.rule.master",
                   False, False, rules=rules)


class EvaluateUserRulesTest(unittest.TestCase):
    def test_room_rule_mutes_a_room(self) -> None:
        own = {"rule_id": ROOM, "default": False, "enabled": True, "actions": []}
        rules = ruleset(room=[own])
        self.assertFalse(evaluate(rules, message(), ctx()).notify)
        other_room = dict(message(), room_id="!other:example.org")
        self.assertTrue(evaluate(rules, other_room, ctx()).notify)
        # Mentions are overrides, which come before room rules.
        mention = message("x", **{"m.mentions": {"user_ids": [ALICE]}})
        self.assertTrue(evaluate(rules, mention, ctx()).highlight)

    def test_sender_rule(self) -> None:
        own = {"rule_id": BOB, "default": False, "enabled": True,
               "actions": ["notify", {"set_tweak": "highlight"}]}
        result = evaluate(ruleset(sender=[own]), message(), ctx())
        self.assertEqual((result.kind, result.highlight), ("sender", True))

    def test_content_rule_before_room_rule(self) -> None:
        content = {"rule_id": "cake", "default": False, "enabled": True, "pattern": "cake",
                   "actions": ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}]}
        room = {"rule_id": ROOM, "default": False, "enabled": True, "actions": []}
        rules = ruleset(content=[content], room=[room])
        result = evaluate(rules, message("time for cake"), ctx())
        self.assertEqual((result.rule_id, result.sound), ("cake", "cakealarm.wav"))
        self.assertFalse(evaluate(rules, message("time for tea"), ctx()).notify)

    def test_override_rule_before_default_overrides_but_after_master(self) -> None:
        beer = {"rule_id": "beer", "default": False, "enabled": True,
                "conditions": [cond("event_match", key="content.body", pattern="beer"),
                               cond("room_member_count", **{"is": "<=10"})],
                "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}]}
        rules = ruleset(override=[beer])
        self.assertEqual([r["rule_id"] for r in rules["override"][:3]],
                         [".m.rule.master", "beer", ".m.rule.suppress_notices"])
        notice = message("beer?", msgtype="m.notice")
        self.assertEqual(evaluate(rules, notice, ctx(member_count=3)).rule_id, "beer")
        self.assertEqual(evaluate(rules, notice, ctx(member_count=30)).rule_id,
                         ".m.rule.suppress_notices")

    def test_disabled_rules_never_match(self) -> None:
        own = {"rule_id": ROOM, "default": False, "enabled": False, "actions": []}
        self.assertTrue(evaluate(ruleset(room=[own]), message(), ctx()).notify)
        rules = ruleset()
        for rule in rules["underride"]:
            rule["enabled"] = False
        self.assertFalse(evaluate(rules, message(), ctx()).notify)

    def test_rule_with_no_conditions_matches_everything(self) -> None:
        catch_all = {"rule_id": "all", "default": False, "enabled": True, "conditions": [],
                     "actions": ["notify"]}
        topic = {"type": "m.room.topic", "sender": BOB, "state_key": "", "content": {}}
        self.assertEqual(evaluate(ruleset(underride=[catch_all]), topic, ctx()).rule_id, "all")

    def test_garbage_in_ruleset_is_skipped(self) -> None:
        rules = ruleset()
        rules["override"].insert(1, "not a rule")
        rules["override"].insert(1, {"rule_id": "x", "enabled": True, "conditions": "bad"})
        self.assertEqual(evaluate(rules, message(), ctx()).rule_id, ".m.rule.message")
