"""/pushrules: the served default set, user rules and their ordering, enabled/actions,
deletion, and every error a client can provoke."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from jsonschema import Draft202012Validator
from twisted.internet import defer

import homeserver.handlers.push_rules as push_rules_handler
from homeserver.http.errors import MatrixError
from homeserver.push.evaluator import PushContext, evaluate
from tests.harness import HomeserverTestCase

BASE = "/_matrix/client/v3/pushrules"
ALICE = "@alice:test.local"
ROOM = "!room:test.local"
SPEC_DIR = "/work/shared/matrix-spec/data/api/client-server/definitions"

# The spec's PushRuleset / PushRule / PushCondition (definitions/push_*.yaml), made strict
# where the spec's prose is (conditions only on override/underride, pattern only on content).
_CONDITION = {
    "type": "object", "required": ["kind"],
    "properties": {"kind": {"type": "string"}, "key": {"type": "string"},
                   "pattern": {"type": "string"}, "is": {"type": "string"},
                   "value": {"type": ["string", "integer", "boolean", "null"]}},
}


def _rule(extra: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["actions", "default", "enabled", "rule_id", *required],
        "additionalProperties": False,
        "properties": {"actions": {"type": "array", "items": {"type": ["string", "object"]}},
                       "default": {"type": "boolean"}, "enabled": {"type": "boolean"},
                       "rule_id": {"type": "string"}, **extra},
    }


_CONDITIONAL = _rule({"conditions": {"type": "array", "items": _CONDITION}}, ["conditions"])
_SIMPLE = _rule({}, [])
RULESET_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["override", "content", "room", "sender", "underride"],
    "properties": {
        "override": {"type": "array", "items": _CONDITIONAL},
        "underride": {"type": "array", "items": _CONDITIONAL},
        "content": {"type": "array", "items": _rule({"pattern": {"type": "string"}}, ["pattern"])},
        "room": {"type": "array", "items": _SIMPLE},
        "sender": {"type": "array", "items": _SIMPLE},
    },
}


def spec_ruleset_validator() -> Draft202012Validator | None:
    """The spec's own YAML schemas, when the spec checkout is present."""
    if not os.path.isdir(SPEC_DIR):
        return None
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    docs = {}
    for name in ("push_ruleset.yaml", "push_rule.yaml", "push_condition.yaml"):
        with open(os.path.join(SPEC_DIR, name)) as f:
            docs[name] = yaml.safe_load(f)
    registry = Registry().with_resources(
        (name, Resource(contents=doc, specification=DRAFT202012)) for name, doc in docs.items()
    )
    return Draft202012Validator(docs["push_ruleset.yaml"], registry=registry)


class PushRulesTest(HomeserverTestCase):
    async def alice(self) -> str:
        return (await self.register("alice"))["access_token"]

    async def put(self, token: str, kind: str, rule_id: str, body: Any, query: str = "") -> Any:
        return await self.request("PUT", f"{BASE}/global/{kind}/{quote(rule_id, safe='')}{query}",
                                  body, token=token)

    async def ids(self, token: str, kind: str) -> list[str]:
        resp = await self.request("GET", f"{BASE}/", token=token)
        self.assertEqual(resp.code, 200, resp)
        return [r["rule_id"] for r in resp.json["global"][kind]]

    async def own_ids(self, token: str, kind: str) -> list[str]:
        return [i for i in await self.ids(token, kind) if not i.startswith(".")]

    # -- the default set -------------------------------------------------------------

    async def test_default_ruleset_is_served_in_the_spec_shape(self) -> None:
        token = await self.alice()
        resp = await self.request("GET", f"{BASE}/", token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(list(resp.json), ["global"])
        ruleset = resp.json["global"]
        Draft202012Validator(RULESET_SCHEMA).validate(ruleset)
        spec = spec_ruleset_validator()
        if spec is not None:
            spec.validate(ruleset)
        self.assertEqual([r["rule_id"] for r in ruleset["override"]], [
            ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
            ".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.contains_display_name",
            ".m.rule.is_room_mention", ".m.rule.roomnotif", ".m.rule.tombstone",
            ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits",
        ])
        self.assertEqual([r["rule_id"] for r in ruleset["underride"]], [
            ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
            ".m.rule.message", ".m.rule.encrypted",
        ])
        self.assertEqual(ruleset["content"][0]["pattern"], "alice")
        self.assertEqual((ruleset["room"], ruleset["sender"]), ([], []))
        self.assertFalse(ruleset["override"][0]["enabled"])
        invite = ruleset["override"][2]
        self.assertIn({"kind": "event_match", "key": "state_key", "pattern": ALICE},
                      invite["conditions"])
        resp = await self.request("GET", f"{BASE}/global/", token=token)
        self.assertEqual(resp.json, ruleset)

    async def test_get_one_default_rule(self) -> None:
        token = await self.alice()
        resp = await self.request("GET", f"{BASE}/global/override/.m.rule.master", token=token)
        self.assertEqual(resp.json, {"rule_id": ".m.rule.master", "default": True,
                                     "enabled": False, "conditions": [], "actions": []})
        resp = await self.request("GET", f"{BASE}/global/underride/.m.rule.message/enabled",
                                  token=token)
        self.assertEqual(resp.json, {"enabled": True})
        resp = await self.request("GET", f"{BASE}/global/underride/.m.rule.message/actions",
                                  token=token)
        self.assertEqual(resp.json, {"actions": ["notify"]})
        # The right id under the wrong kind is not found.
        resp = await self.request("GET", f"{BASE}/global/underride/.m.rule.master", token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    # -- user rules --------------------------------------------------------------------

    async def test_add_get_and_order_with_before_after(self) -> None:
        token = await self.alice()
        beer = {"conditions": [{"kind": "event_match", "key": "content.body", "pattern": "beer"},
                               {"kind": "room_member_count", "is": "<=10"}],
                "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}]}
        for rule_id in ("a", "b"):
            resp = await self.put(token, "override", rule_id, beer)
            self.assertEqual((resp.code, resp.json), (200, {}), resp)
        # Without before/after a new rule is the most important user rule.
        self.assertEqual(await self.own_ids(token, "override"), ["b", "a"])
        await self.put(token, "override", "c", beer, "?before=a")
        self.assertEqual(await self.own_ids(token, "override"), ["b", "c", "a"])
        await self.put(token, "override", "d", beer, "?after=b")
        self.assertEqual(await self.own_ids(token, "override"), ["b", "d", "c", "a"])
        await self.put(token, "override", "e", beer, "?after=a")
        self.assertEqual(await self.own_ids(token, "override"), ["b", "d", "c", "a", "e"])
        # Both given: before wins (spec).
        await self.put(token, "override", "f", beer, "?before=b&after=e")
        self.assertEqual(await self.own_ids(token, "override"), ["f", "b", "d", "c", "a", "e"])
        # Moving an existing rule.
        await self.put(token, "override", "f", beer, "?after=e")
        self.assertEqual(await self.own_ids(token, "override"), ["b", "d", "c", "a", "e", "f"])
        # Master stays first, user overrides come before the other defaults.
        ids = await self.ids(token, "override")
        self.assertEqual(ids[:8], [".m.rule.master", "b", "d", "c", "a", "e", "f",
                                   ".m.rule.suppress_notices"])
        resp = await self.request("GET", f"{BASE}/global/override/c", token=token)
        self.assertEqual(resp.json, {"rule_id": "c", "default": False, "enabled": True, **beer})

    async def test_replacing_keeps_place_and_enabled_state(self) -> None:
        token = await self.alice()
        await self.put(token, "underride", "x", {"conditions": [], "actions": ["notify"]})
        await self.put(token, "underride", "y", {"conditions": [], "actions": []})
        await self.request("PUT", f"{BASE}/global/underride/x/enabled", {"enabled": False},
                           token=token)
        await self.put(token, "underride", "x", {"actions": ["dont_notify"]})
        self.assertEqual(await self.ids(token, "underride"),
                         ["y", "x", ".m.rule.call", ".m.rule.encrypted_room_one_to_one",
                          ".m.rule.room_one_to_one", ".m.rule.message", ".m.rule.encrypted"])
        resp = await self.request("GET", f"{BASE}/global/underride/x", token=token)
        self.assertEqual(resp.json, {"rule_id": "x", "default": False, "enabled": False,
                                     "conditions": [], "actions": ["dont_notify"]})

    async def test_content_room_and_sender_rules(self) -> None:
        token = await self.alice()
        resp = await self.put(token, "content", "cake", {
            "pattern": "cake*lie", "actions": ["notify"], "conditions": [{"kind": "ignored"}]})
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{BASE}/global/content/cake", token=token)
        self.assertEqual(resp.json, {"rule_id": "cake", "default": False, "enabled": True,
                                     "pattern": "cake*lie", "actions": ["notify"]})
        self.assertEqual(await self.ids(token, "content"), ["cake", ".m.rule.contains_user_name"])
        resp = await self.put(token, "room", ROOM, {"actions": [], "pattern": "ignored"})
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{BASE}/global/room/{quote(ROOM)}", token=token)
        self.assertEqual(resp.json, {"rule_id": ROOM, "default": False, "enabled": True,
                                     "actions": []})
        resp = await self.put(token, "sender", "@spambot:matrix.org", {"actions": []})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.ids(token, "sender"), ["@spambot:matrix.org"])
        ruleset = (await self.request("GET", f"{BASE}/", token=token)).json["global"]
        Draft202012Validator(RULESET_SCHEMA).validate(ruleset)

    async def test_enable_disable(self) -> None:
        token = await self.alice()
        path = f"{BASE}/global/override/.m.rule.master/enabled"
        resp = await self.request("PUT", path, {"enabled": True}, token=token)
        self.assertEqual((resp.code, resp.json), (200, {}), resp)
        self.assertEqual((await self.request("GET", path, token=token)).json, {"enabled": True})
        rule = await self.request("GET", f"{BASE}/global/override/.m.rule.master", token=token)
        self.assertEqual((rule.json["enabled"], rule.json["default"]), (True, True))
        await self.request("PUT", path, {"enabled": False}, token=token)
        self.assertEqual((await self.request("GET", path, token=token)).json, {"enabled": False})
        await self.put(token, "sender", "@bob:test.local", {"actions": []})
        own = f"{BASE}/global/sender/{quote('@bob:test.local')}/enabled"
        await self.request("PUT", own, {"enabled": False}, token=token)
        self.assertEqual((await self.request("GET", own, token=token)).json, {"enabled": False})

    async def test_set_actions(self) -> None:
        token = await self.alice()
        path = f"{BASE}/global/underride/.m.rule.message/actions"
        actions = ["notify", {"set_tweak": "sound", "value": "ping.wav"},
                   {"set_tweak": "highlight", "value": False}, {"set_tweak": "x-custom", "value": 3}]
        resp = await self.request("PUT", path, {"actions": actions}, token=token)
        self.assertEqual((resp.code, resp.json), (200, {}), resp)
        self.assertEqual((await self.request("GET", path, token=token)).json, {"actions": actions})
        await self.put(token, "override", "mine", {"conditions": [], "actions": ["notify"]})
        own = f"{BASE}/global/override/mine/actions"
        await self.request("PUT", own, {"actions": []}, token=token)
        self.assertEqual((await self.request("GET", own, token=token)).json, {"actions": []})
        # Enabling a default rule does not lose its changed actions, and vice versa.
        await self.request("PUT", f"{BASE}/global/underride/.m.rule.message/enabled",
                           {"enabled": False}, token=token)
        rule = (await self.request("GET", f"{BASE}/global/underride/.m.rule.message",
                                   token=token)).json
        self.assertEqual((rule["enabled"], rule["actions"]), (False, actions))

    async def test_delete(self) -> None:
        token = await self.alice()
        await self.put(token, "override", "gone", {"conditions": [], "actions": []})
        resp = await self.request("DELETE", f"{BASE}/global/override/gone", token=token)
        self.assertEqual((resp.code, resp.json), (200, {}), resp)
        resp = await self.request("GET", f"{BASE}/global/override/gone", token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("DELETE", f"{BASE}/global/override/gone", token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        self.assertEqual(await self.own_ids(token, "override"), [])

    async def test_rules_are_per_user(self) -> None:
        token = await self.alice()
        await self.put(token, "override", "secret", {"conditions": [], "actions": []})
        await self.request("PUT", f"{BASE}/global/override/.m.rule.master/enabled",
                           {"enabled": True}, token=token)
        bob = (await self.register("bob"))["access_token"]
        resp = await self.request("GET", f"{BASE}/global/override/secret", token=bob)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("DELETE", f"{BASE}/global/override/secret", token=bob)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        ruleset = (await self.request("GET", f"{BASE}/", token=bob)).json["global"]
        self.assertFalse(ruleset["override"][0]["enabled"])
        self.assertEqual(ruleset["content"][0]["pattern"], "bob")

    async def test_concurrent_changes_keep_a_consistent_order(self) -> None:
        token = await self.alice()
        body = {"conditions": [], "actions": []}
        await self.put(token, "override", "anchor", body)
        puts = [defer.ensureDeferred(self.put(token, "override", f"r{i}", body,
                                              "?before=anchor" if i % 2 else "?after=anchor"))
                for i in range(12)]
        for resp in await defer.gatherResults(puts):
            self.assertEqual(resp.code, 200, resp)
        ids = await self.own_ids(token, "override")
        self.assertEqual(sorted(ids), sorted(["anchor"] + [f"r{i}" for i in range(12)]))
        position = ids.index("anchor")
        self.assertEqual(sorted(ids[:position]), sorted(f"r{i}" for i in range(1, 12, 2)))
        self.assertEqual(sorted(ids[position + 1:]), sorted(f"r{i}" for i in range(0, 12, 2)))

    async def test_erasing_a_user_restores_the_defaults(self) -> None:
        token = await self.alice()
        pristine = (await self.request("GET", f"{BASE}/", token=token)).json
        await self.put(token, "override", "a", {"conditions": [], "actions": []})
        await self.request("PUT", f"{BASE}/global/override/.m.rule.master/enabled",
                           {"enabled": True}, token=token)
        await self.hs.stores.push_rules.delete_all_for_user(ALICE)
        self.assertEqual((await self.request("GET", f"{BASE}/", token=token)).json, pristine)
        self.assertEqual(await self.hs.stores.push_rules.get_stream_id(ALICE), 0)

    async def test_changes_move_the_stream_position(self) -> None:
        token = await self.alice()
        store = self.hs.stores.push_rules
        self.assertEqual(await store.get_stream_id(ALICE), 0)
        await self.put(token, "override", "a", {"conditions": [], "actions": []})
        first = await store.get_stream_id(ALICE)
        self.assertGreater(first, 0)
        await self.request("PUT", f"{BASE}/global/override/a/enabled", {"enabled": False},
                           token=token)
        second = await store.get_stream_id(ALICE)
        self.assertGreater(second, first)
        # A failed change leaves it alone.
        await self.request("DELETE", f"{BASE}/global/override/nope", token=token)
        await self.put(token, "override", "b", {"actions": []}, "?before=nope")
        self.assertEqual(await store.get_stream_id(ALICE), second)

    async def test_handler_tells_listeners_of_changes(self) -> None:
        await self.alice()
        handler = push_rules_handler.PushRulesHandler(self.hs.stores.push_rules)
        seen: list[tuple[int, str]] = []
        handler.on_change.append(lambda pos, uid: seen.append((pos, uid)))
        await handler.set_rule(ALICE, "override", "a", {"conditions": [], "actions": []})
        await handler.set_enabled(ALICE, "override", ".m.rule.master", True)
        await handler.set_actions(ALICE, "override", "a", ["notify"])
        await handler.delete_rule(ALICE, "override", "a")
        with self.assertRaises(MatrixError):
            await handler.delete_rule(ALICE, "override", "a")
        self.assertEqual([uid for _, uid in seen], [ALICE] * 4)
        positions = [pos for pos, _ in seen]
        self.assertEqual(positions, sorted(set(positions)))
        self.assertEqual(await handler.get_stream_id(ALICE), positions[-1])
        content = await handler.get_push_rules_json(ALICE)
        self.assertTrue(content["global"]["override"][0]["enabled"])

    async def test_served_rules_drive_the_evaluator(self) -> None:
        token = await self.alice()
        event = {"type": "m.room.message", "sender": "@bob:test.local", "room_id": ROOM,
                 "content": {"msgtype": "m.text", "body": "hello"}}
        context = PushContext(user_id=ALICE, member_count=2, display_name="alice")

        async def outcome() -> tuple[str | None, bool]:
            rules = (await self.request("GET", f"{BASE}/", token=token)).json["global"]
            result = evaluate(rules, event, context)
            return result.rule_id, result.notify

        self.assertEqual(await outcome(), (".m.rule.room_one_to_one", True))
        await self.put(token, "room", ROOM, {"actions": []})
        self.assertEqual(await outcome(), (ROOM, False))
        await self.request("PUT", f"{BASE}/global/room/{quote(ROOM)}/enabled", {"enabled": False},
                           token=token)
        self.assertEqual(await outcome(), (".m.rule.room_one_to_one", True))
        await self.request("PUT", f"{BASE}/global/override/.m.rule.master/enabled",
                           {"enabled": True}, token=token)
        self.assertEqual(await outcome(), (".m.rule.master", False))

    # -- errors ------------------------------------------------------------------------

    async def test_no_token(self) -> None:
        rule = f"{BASE}/global/override/.m.rule.master"
        for method, path, body in (
            ("GET", f"{BASE}/", None), ("GET", f"{BASE}/global/", None), ("GET", rule, None),
            ("PUT", f"{BASE}/global/override/x", {"actions": []}), ("DELETE", rule, None),
            ("GET", f"{rule}/enabled", None), ("PUT", f"{rule}/enabled", {"enabled": True}),
            ("GET", f"{rule}/actions", None), ("PUT", f"{rule}/actions", {"actions": []}),
        ):
            resp = await self.request(method, path, body)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_unknown_rule_is_404(self) -> None:
        token = await self.alice()
        for kind, rule_id in (("override", "nope"), ("override", ".m.rule.nope"),
                              ("room", "!nope:test.local")):
            path = f"{BASE}/global/{kind}/{quote(rule_id, safe='')}"
            for method, sub, body in (("GET", "", None), ("DELETE", "", None),
                                      ("GET", "/enabled", None), ("GET", "/actions", None),
                                      ("PUT", "/enabled", {"enabled": True}),
                                      ("PUT", "/actions", {"actions": ["notify"]})):
                resp = await self.request(method, path + sub, body, token=token)
                self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_unknown_kind_is_400(self) -> None:
        token = await self.alice()
        path = f"{BASE}/global/postcontent/x"
        for method, sub, body in (("GET", "", None), ("PUT", "", {"actions": []}),
                                  ("DELETE", "", None), ("GET", "/enabled", None),
                                  ("PUT", "/enabled", {"enabled": True}),
                                  ("GET", "/actions", None), ("PUT", "/actions", {"actions": []})):
            resp = await self.request(method, path + sub, body, token=token)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", f"{BASE}/device/override/x", token=token)
        self.assertMatrixError(resp, 400, "M_UNRECOGNIZED")

    async def test_server_default_rules_cannot_be_replaced_or_deleted(self) -> None:
        token = await self.alice()
        for kind, rule_id in (("override", ".m.rule.master"), ("underride", ".m.rule.message"),
                              ("override", ".my.own"), ("content", ".m.rule.contains_user_name")):
            resp = await self.put(token, kind, rule_id, {"conditions": [], "pattern": "x",
                                                         "actions": []})
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        for kind, rule_id in (("override", ".m.rule.master"), ("underride", ".m.rule.message")):
            resp = await self.request("DELETE", f"{BASE}/global/{kind}/{rule_id}", token=token)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        self.assertIn(".m.rule.master", await self.ids(token, "override"))

    async def test_before_after_errors(self) -> None:
        token = await self.alice()
        body = {"conditions": [], "actions": []}
        await self.put(token, "override", "a", body)
        await self.put(token, "underride", "u", body)
        for query in ("?before=nope", "?after=nope", "?before=u"):  # u is another kind's
            resp = await self.put(token, "override", "b", body, query)
            self.assertMatrixError(resp, 400, "M_UNKNOWN")
        for query in ("?before=.m.rule.suppress_notices", "?after=.m.rule.master",
                      "?before=.nonexistent"):
            resp = await self.put(token, "override", "b", body, query)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.own_ids(token, "override"), ["a"])
        # An empty anchor is no anchor.
        resp = await self.put(token, "override", "b", body, "?before=")
        self.assertEqual(resp.code, 200, resp)

    async def test_bad_actions(self) -> None:
        token = await self.alice()
        bad: list[Any] = [["bogus"], "notify", None, {"a": 1}, [5], [None], [["notify"]],
                          [{"set_tweak": 5}], [{"value": "x"}], [{"set_tweak": "highlight",
                                                                  "value": "yes"}],
                          [{"set_tweak": "sound"}], [{"set_tweak": "sound", "value": 1}],
                          ["notify"] * 101]
        for actions in bad:
            resp = await self.put(token, "override", "x", {"conditions": [], "actions": actions})
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
            resp = await self.request("PUT", f"{BASE}/global/underride/.m.rule.message/actions",
                                      {"actions": actions}, token=token)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.put(token, "override", "x", {"conditions": []})
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("PUT", f"{BASE}/global/underride/.m.rule.message/actions", {},
                                  token=token)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        # Legacy actions are accepted (and ignored by the evaluator).
        resp = await self.put(token, "override", "x", {"conditions": [],
                                                       "actions": ["dont_notify", "coalesce"]})
        self.assertEqual(resp.code, 200, resp)

    async def test_bad_enabled(self) -> None:
        token = await self.alice()
        path = f"{BASE}/global/override/.m.rule.master/enabled"
        for body in ({"enabled": "true"}, {"enabled": 1}, {"enabled": None}):
            resp = await self.request("PUT", path, body, token=token)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("PUT", path, {}, token=token)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("PUT", path, raw_body=b"true", token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("PUT", path, raw_body=b"{not json", token=token)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")

    async def test_bad_rule_ids(self) -> None:
        token = await self.alice()
        body = {"conditions": [], "actions": [], "pattern": "x"}
        for kind, rule_id in (("override", "a/b"), ("override", "a\\b"), ("override", "x" * 256),
                              ("override", "tab\there"), ("room", "not-a-room"),
                              ("room", "!"), ("room", "#alias"), ("room", "#:test.local"),
                              ("sender", "bob"), ("sender", "@bob"), ("sender", "@:test.local"),
                              ("sender", "!room:test.local")):
            resp = await self.put(token, kind, rule_id, body)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("PUT", f"{BASE}/global/override/%FF", body, token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", f"{BASE}/global/override/%00", token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_bad_conditions_and_patterns(self) -> None:
        token = await self.alice()
        cases: list[tuple[Any, str]] = [
            ("nope", "M_BAD_JSON"),
            ([5], "M_BAD_JSON"),
            ([{}], "M_MISSING_PARAM"),
            ([{"kind": 5}], "M_BAD_JSON"),
            ([{"kind": "event_match", "key": "type"}], "M_INVALID_PARAM"),
            ([{"kind": "event_match", "pattern": "x"}], "M_INVALID_PARAM"),
            ([{"kind": "event_match", "key": "type", "pattern": "x" * 1025}], "M_INVALID_PARAM"),
            ([{"kind": "room_member_count"}], "M_INVALID_PARAM"),
            ([{"kind": "room_member_count", "is": "abc"}], "M_INVALID_PARAM"),
            ([{"kind": "room_member_count", "is": "=<2"}], "M_INVALID_PARAM"),
            ([{"kind": "room_member_count", "is": 2}], "M_BAD_JSON"),
            ([{"kind": "event_property_is", "key": "content.x"}], "M_MISSING_PARAM"),
            ([{"kind": "event_property_is", "key": "content.x", "value": {"a": 1}}], "M_BAD_JSON"),
            ([{"kind": "event_property_is", "key": "content.x", "value": 1.5}], "M_BAD_JSON"),
            ([{"kind": "event_property_contains", "key": "x", "value": 2**60}], "M_INVALID_PARAM"),
            ([{"kind": "sender_notification_permission"}], "M_INVALID_PARAM"),
            ([{"kind": "event_match", "key": "a", "pattern": "b"}] * 101, "M_INVALID_PARAM"),
        ]
        for conditions, errcode in cases:
            resp = await self.put(token, "override", "x", {"conditions": conditions, "actions": []})
            self.assertMatrixError(resp, 400, errcode)
        resp = await self.put(token, "content", "x", {"actions": []})
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.put(token, "content", "x", {"actions": [], "pattern": 5})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.put(token, "content", "x", {"actions": [], "pattern": "p" * 1025})
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        self.assertEqual(await self.own_ids(token, "override"), [])
        # Unknown condition kinds are kept (and never match); a missing list is empty.
        future = [{"kind": "org.example.future", "anything": [1, 2]}]
        resp = await self.put(token, "override", "f", {"conditions": future, "actions": []})
        self.assertEqual(resp.code, 200, resp)
        resp = await self.put(token, "underride", "g", {"actions": ["notify"]})
        self.assertEqual(resp.code, 200, resp)
        rule = (await self.request("GET", f"{BASE}/global/underride/g", token=token)).json
        self.assertEqual(rule["conditions"], [])

    async def test_rule_count_is_limited(self) -> None:
        self.patch(push_rules_handler, "MAX_RULES_PER_USER", 3)
        token = await self.alice()
        for i in range(3):
            resp = await self.put(token, "override", f"r{i}", {"conditions": [], "actions": []})
            self.assertEqual(resp.code, 200, resp)
        resp = await self.put(token, "room", ROOM, {"actions": []})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Replacing an existing rule is still allowed.
        resp = await self.put(token, "override", "r0", {"conditions": [], "actions": ["notify"]},
                              "?after=r2")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.own_ids(token, "override"), ["r2", "r0", "r1"])
