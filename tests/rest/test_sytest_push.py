"""SyTest's push tests (tests/61push/02add_rules.pl, 80torture.pl, 09_notifications_api.pl),
reproduced at HTTP level: every path shape of /pushrules, room rules keyed by alias,
the per-kind listing, the torture paths' 400s, and /notifications emptying once read."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.rest.room_helpers import CS, RoomTestCase, q

BASE = f"{CS}/pushrules"
R0 = "/_matrix/client/r0/pushrules"


def rule_path(scope: str, kind: str, rule_id: str) -> str:
    # As SyTest sends them: '#' escaped, ':' and '@' left alone.
    return f"{R0}/{scope}/{kind}/{quote(rule_id, safe=':@')}"


# 02add_rules.pl's $TO_CHECK: (kind, rule id, extra body).
TO_CHECK: list[tuple[str, str, dict[str, Any]]] = [
    ("room", "#spam:example.com", {}),
    ("sender", "@bob:example.com", {}),
    ("content", "my_content_rule", {"pattern": "my_pattern"}),
    ("override", "my_override_rule", {"conditions": [
        {"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}]}),
    ("underride", "my_underride_rule", {"conditions": [
        {"kind": "event_match", "key": "content.msgtype", "pattern": "m.notice"}]}),
    ("content", "тест", {"pattern": "тест"}),
]

# 80torture.pl: (name, path, body) that PUT must refuse with a 400.
TORTURE_PUT: list[tuple[str, str, dict[str, Any]]] = [
    ("no scope", "/", {}),
    ("invalid scope", "/not_a_scope/room/%23spam:example.com", {}),
    ("missing template", "/global", {}),
    ("missing rule_id", "/global/room", {}),
    ("empty rule_id", "/global/room/", {}),
    ("invalid template", "/global/not_a_template/foo", {}),
    ("rule_id with slashes", "/global/room/%23fo%5Co:example.com", {}),
    ("override rule without conditions", "/global/override/my_id", {}),
    ("underride rule without conditions", "/global/underride/my_id", {}),
    ("condition without kind", "/global/underride/my_id", {"conditions": [{}]}),
    ("content rule without pattern", "/global/content/my_id", {}),
    ("no actions", "/global/room/%23my_room:example.com", {}),
    ("invalid action", "/global/room/%23my_room:example.com", {"actions": ["not_an_action"]}),
    ("invalid attr", "/global/override/.m.rule.master/not_an_attr", {"enabled": True}),
    ("invalid value for enabled", "/global/override/.m.rule.master/enabled",
     {"enabled": "not a boolean"}),
]
TORTURE_GET_400 = ["", "/global", "/global/room", "/not_a_scope/", "/global/not_a_template/",
                   "/global/override/.m.rule.master/not_an_attr"]


class SyTestPushRulesTest(RoomTestCase):
    async def check_add_push_rule(self, token: str, kind: str, rule_id: str,
                                  body: dict[str, Any], query: str = "") -> None:
        """02add_rules.pl's check_add_push_rule: the rule is served by every read path."""
        path = rule_path("global", kind, rule_id)
        resp = await self.request("PUT", path + query, body, token=token)
        self.assertEqual(resp.code, 200, resp)

        def check(rule: Any) -> None:
            self.assertIsInstance(rule, dict, rule)
            self.assertEqual(rule["rule_id"], rule_id)
            self.assertIs(rule["enabled"], True)
            self.assertIn("actions", rule)

        def check_list(rules: Any) -> None:
            self.assertIsInstance(rules, list, rules)
            check(next(r for r in rules if r["rule_id"] == rule_id))

        resp = await self.request("GET", path, token=token)
        self.assertEqual(resp.code, 200, resp)
        check(resp.json)
        resp = await self.request("GET", f"{R0}/global/{kind}/", token=token)
        self.assertEqual(resp.code, 200, resp)
        check_list(resp.json)
        resp = await self.request("GET", f"{R0}/global/", token=token)
        self.assertEqual(resp.code, 200, resp)
        check_list(resp.json[kind])
        resp = await self.request("GET", f"{R0}/", token=token)
        self.assertEqual(resp.code, 200, resp)
        check_list(resp.json["global"][kind])
        resp = await self.request("GET", f"{path}/enabled", token=token)
        self.assertEqual(resp.json, {"enabled": True})
        resp = await self.request("GET", f"{path}/actions", token=token)
        self.assertEqual(resp.json, {"actions": body["actions"]})

    async def room_ids(self, token: str) -> list[str]:
        resp = await self.request("GET", f"{R0}/", token=token)
        self.assertEqual(resp.code, 200, resp)
        return [r["rule_id"] for r in resp.json["global"]["room"]]

    async def test_can_add_global_push_rule_for_each_kind(self) -> None:
        """'Can add global push rule for room/sender/content/override/underride'."""
        for i, (kind, rule_id, extra) in enumerate(TO_CHECK):
            token = await self.user(f"u{i}")
            await self.check_add_push_rule(token, kind, rule_id, {"actions": ["notify"], **extra})

    async def test_new_rules_appear_before_old_rules(self) -> None:
        token = await self.user("alice")
        for rid in ("#a:example.com", "#b:example.com"):
            await self.check_add_push_rule(token, "room", rid, {"actions": ["notify"]})
        self.assertEqual(await self.room_ids(token), ["#b:example.com", "#a:example.com"])

    async def test_before_and_after_an_existing_rule(self) -> None:
        token = await self.user("alice")
        for rid in ("#a:example.com", "#b:example.com"):
            await self.check_add_push_rule(token, "room", rid, {"actions": ["notify"]})
        await self.check_add_push_rule(token, "room", "#c:example.com", {"actions": ["notify"]},
                                       "?before=" + q("#a:example.com"))
        self.assertEqual(await self.room_ids(token),
                         ["#b:example.com", "#c:example.com", "#a:example.com"])
        token = await self.user("bob")
        for rid in ("#a:example.com", "#b:example.com"):
            await self.check_add_push_rule(token, "room", rid, {"actions": ["notify"]})
        await self.check_add_push_rule(token, "room", "#c:example.com", {"actions": ["notify"]},
                                       "?after=" + q("#b:example.com"))
        self.assertEqual(await self.room_ids(token),
                         ["#b:example.com", "#c:example.com", "#a:example.com"])

    async def test_delete_and_disable(self) -> None:
        token = await self.user("alice")
        for rid in ("#a:example.com", "#b:example.com"):
            await self.check_add_push_rule(token, "room", rid, {"actions": ["notify"]})
        path = rule_path("global", "room", "#a:example.com")
        resp = await self.request("PUT", f"{path}/enabled", {"enabled": False}, token=token)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", path, token=token)
        self.assertIs(resp.json["enabled"], False)
        resp = await self.request("DELETE", path, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.room_ids(token), ["#b:example.com"])

    async def test_adding_the_same_rule_twice_is_idempotent(self) -> None:
        token = await self.user("alice")
        for _ in range(2):
            resp = await self.request("PUT", rule_path("global", "sender", "@bob:example.com"),
                                      {"actions": ["notify"]}, token=token)
            self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{R0}/global/sender/", token=token)
        self.assertEqual([r["rule_id"] for r in resp.json], ["@bob:example.com"])

    async def test_a_room_rule_keyed_by_alias_never_matches(self) -> None:
        """Accepting an alias (as Synapse) must not make the rule apply to any room."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat",
                                      room_alias_name="muted")
        self.assertEqual((await self.join(bob, room)).code, 200)
        resp = await self.request("PUT", rule_path("global", "room", "#muted:test.local"),
                                  {"actions": ["dont_notify"]}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        event_id = await self.send_ok(alice, room, "still notifies")
        resp = await self.request("GET", f"{CS}/notifications", token=bob)
        self.assertEqual([n["event"]["event_id"] for n in resp.json["notifications"]], [event_id])

    async def test_get_kind_list(self) -> None:
        token = await self.user("alice")
        resp = await self.request("GET", f"{BASE}/global/override/", token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json[0]["rule_id"], ".m.rule.master")
        resp = await self.request("GET", f"{BASE}/global/room/", token=token)
        self.assertEqual(resp.json, [])
        self.assertMatrixError(await self.request("GET", f"{BASE}/global/room/"), 401,
                               "M_MISSING_TOKEN")

    # -- 80torture.pl -----------------------------------------------------------------

    async def test_torture_put_fails_with_400(self) -> None:
        token = await self.user("alice")
        for name, path, body in TORTURE_PUT:
            resp = await self.request("PUT", f"{BASE}{path}", body, token=token)
            self.assertEqual(resp.code, 400, (name, resp))
            self.assertIsInstance(resp.json.get("errcode"), str, (name, resp))
        # Nothing was changed by any of them.
        resp = await self.request("GET", f"{BASE}/global/override/.m.rule.master", token=token)
        self.assertIs(resp.json["enabled"], False)

    async def test_torture_get_fails_with_400(self) -> None:
        token = await self.user("alice")
        for path in TORTURE_GET_400:
            resp = await self.request("GET", f"{BASE}{path}", token=token)
            self.assertEqual(resp.code, 400, (path, resp))
            self.assertIsInstance(resp.json.get("errcode"), str, (path, resp))
        resp = await self.request("GET", f"{BASE}/global/override/not_a_rule_id", token=token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_malformed_paths_need_a_token_and_are_unrecognized(self) -> None:
        for method, path in (("GET", ""), ("PUT", "/global/room"), ("DELETE", "/global/room/"),
                             ("GET", "/global/override/.m.rule.master/conditions")):
            resp = await self.request(method, f"{BASE}{path}", {} if method == "PUT" else None)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        token = await self.user("alice")
        for method, path in (("PUT", "/"), ("PUT", "/global"), ("DELETE", "/global/room"),
                             ("GET", "/device/"), ("GET", "/global/override/.m.rule.master/x")):
            resp = await self.request(method, f"{BASE}{path}", {} if method == "PUT" else None,
                                      token=token)
            self.assertMatrixError(resp, 400, "M_UNRECOGNIZED")


class SyTestNotificationsTest(RoomTestCase):
    async def test_notifications_can_be_viewed_and_empty_once_read(self) -> None:
        """09_notifications_api.pl: 'Notifications can be viewed with GET /notifications'."""
        user1 = await self.user("user1")
        user2 = await self.user("user2")
        resp = await self.request("PUT", f"{BASE}/global/content/anything",
                                  {"pattern": "*", "actions": ["notify"]}, token=user1)
        self.assertEqual(resp.code, 200, resp)
        room = await self.create_room(user1)
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/invite",
                                  {"user_id": "@user2:test.local"}, token=user1)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(user2, room)).code, 200)
        first = await self.send_ok(user2, room, "Test message 1")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(first)}", {},
                                  token=user1)
        self.assertEqual(resp.code, 200, resp)
        await self.send_ok(user2, room, "Test message 2")
        resp = await self.request("GET", f"{CS}/notifications", token=user1)
        self.assertEqual(resp.code, 200, resp)
        notifs = resp.json["notifications"]
        self.assertEqual(len(notifs), 1, resp.json)
        notif = notifs[0]
        for key in ("room_id", "actions", "event", "read", "ts", "profile_tag"):
            self.assertIn(key, notif)
        self.assertIs(notif["read"], False)
        self.assertEqual(notif["event"]["content"]["body"], "Test message 2")
        third = await self.send_ok(user2, room, "Test message 3")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(third)}", {},
                                  token=user1)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{CS}/notifications", token=user1)
        self.assertEqual(resp.json["notifications"], [])

    async def test_a_threaded_receipt_reads_only_its_thread(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        root = await self.send_ok(alice, room, "root")
        resp = await self.send(alice, room, content={
            "msgtype": "m.text", "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        self.assertEqual(resp.code, 200, resp)
        in_thread = resp.json["event_id"]
        main = await self.send_ok(alice, room, "main again")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(in_thread)}",
                                  {"thread_id": root}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{CS}/notifications", token=bob)
        self.assertEqual([n["event"]["event_id"] for n in resp.json["notifications"]],
                         [main, root])


class SyTestPushersTest(RoomTestCase):
    async def test_can_fetch_a_users_pushers(self) -> None:
        """06_get_pusher.pl: 'Can fetch a user's pushers' (with its unknown data.format)."""
        alice = await self.user("alice")
        body = {"profile_tag": "tag", "kind": "http", "app_id": "sytest",
                "app_display_name": "SyTest", "device_display_name": "A testing machine",
                "pushkey": "This is my pushkey", "lang": "en",
                "data": {"testcustom": "This is some custom data",
                         "url": "https://dummy.url/_matrix/push/v1/notify",
                         "format": "id_event_only"}}
        resp = await self.request("POST", f"{CS}/pushers/set", body, token=alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{CS}/pushers", token=alice)
        self.assertEqual(resp.code, 200, resp)
        pusher = resp.json["pushers"][0]
        for key in ("profile_tag", "kind", "app_id", "app_display_name", "device_display_name",
                    "pushkey", "lang"):
            self.assertEqual(pusher[key], body[key], key)
        self.assertEqual(pusher["data"], body["data"])
