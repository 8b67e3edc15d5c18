"""GET /pushrules/, GET /pushrules/global/, GET/PUT/DELETE
/pushrules/global/{kind}/{ruleId} and GET/PUT .../{ruleId}/enabled and .../actions."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

_SCALAR = {"type": ["string", "integer", "boolean", "null"]}

# The spec's PushCondition; semantic checks (known kinds' parameters) are the handler's.
CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind"],
    "properties": {
        "kind": {"type": "string"},
        "key": {"type": "string"},
        "pattern": {"type": "string"},
        "is": {"type": "string"},
        "value": _SCALAR,
    },
}
# Actions are checked by the handler, so that any bad action is a 400 M_INVALID_PARAM.
RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["actions"],
    "properties": {
        "actions": {},
        "conditions": {"type": "array", "items": CONDITION_SCHEMA},
        "pattern": {"type": "string"},
    },
}
ENABLED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["enabled"],
    "properties": {"enabled": {"type": "boolean"}},
}
ACTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["actions"],
    "properties": {"actions": {}},
}


class PushRuleServlets:
    def __init__(self, push_rules: PushRulesHandler) -> None:
        self._push_rules = push_rules

    def register(self, router: Router) -> None:
        rule = client_paths("/pushrules/global/{kind}/{ruleId}")
        enabled = client_paths("/pushrules/global/{kind}/{ruleId}/enabled")
        actions = client_paths("/pushrules/global/{kind}/{ruleId}/actions")
        router.add("GET", client_paths("/pushrules/"), self.on_get_all)
        router.add("GET", client_paths("/pushrules/global/"), self.on_get_global)
        router.add("GET", rule, self.on_get_rule)
        router.add("PUT", rule, self.on_put_rule, body_schema=RULE_SCHEMA)
        router.add("DELETE", rule, self.on_delete_rule)
        router.add("GET", enabled, self.on_get_enabled)
        router.add("PUT", enabled, self.on_put_enabled, body_schema=ENABLED_SCHEMA)
        router.add("GET", actions, self.on_get_actions)
        router.add("PUT", actions, self.on_put_actions, body_schema=ACTIONS_SCHEMA)

    async def on_get_all(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._push_rules.get_push_rules_json(r.user_id)

    async def on_get_global(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._push_rules.get_ruleset(r.user_id)

    async def on_get_rule(self, req: ApiRequest, kind: str, ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, await self._push_rules.get_rule(r.user_id, kind, ruleId)

    async def on_put_rule(self, req: ApiRequest, kind: str, ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        # An empty before/after is no anchor, as in Synapse.
        before = req.query("before") or None
        after = req.query("after") or None
        await self._push_rules.set_rule(r.user_id, kind, ruleId, req.body, before, after)
        return 200, {}

    async def on_delete_rule(self, req: ApiRequest, kind: str, ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._push_rules.delete_rule(r.user_id, kind, ruleId)
        return 200, {}

    async def on_get_enabled(self, req: ApiRequest, kind: str, ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, {"enabled": await self._push_rules.get_enabled(r.user_id, kind, ruleId)}

    async def on_put_enabled(self, req: ApiRequest, kind: str, ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._push_rules.set_enabled(r.user_id, kind, ruleId, req.body["enabled"])
        return 200, {}

    async def on_get_actions(self, req: ApiRequest, kind: str, ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, {"actions": await self._push_rules.get_actions(r.user_id, kind, ruleId)}

    async def on_put_actions(self, req: ApiRequest, kind: str, ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._push_rules.set_actions(r.user_id, kind, ruleId, req.body["actions"])
        return 200, {}
