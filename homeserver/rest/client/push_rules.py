"""GET /pushrules/, GET /pushrules/global/, GET /pushrules/global/{kind}/ (one kind's
list, as Synapse), GET/PUT/DELETE /pushrules/global/{kind}/{ruleId} and GET/PUT
.../{ruleId}/enabled and .../actions; any other path under /pushrules is a 400."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.http.errors import Codes, MatrixError
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


def unrecognized(msg: str = "Unrecognized request") -> MatrixError:
    """Malformed /pushrules paths: 400 ``M_UNRECOGNIZED``, as Synapse (and SyTest) expect."""
    return MatrixError(400, msg, Codes.UNRECOGNIZED)


def check_scope(scope: str) -> None:
    # ``device/<profile_tag>`` scopes were removed from the spec; only ``global`` remains.
    if scope != "global":
        raise unrecognized("Unknown push rule scope: must be 'global'")


_TRAILING_SLASH = "A trailing slash is needed to list push rules"


class PushRuleServlets:
    def __init__(self, push_rules: PushRulesHandler) -> None:
        self._push_rules = push_rules

    def register(self, router: Router) -> None:
        rule = client_paths("/pushrules/{scope}/{kind}/{ruleId}")
        enabled = client_paths("/pushrules/{scope}/{kind}/{ruleId}/enabled")
        actions = client_paths("/pushrules/{scope}/{kind}/{ruleId}/actions")
        router.add("GET", client_paths("/pushrules/"), self.on_get_all)
        router.add("GET", client_paths("/pushrules/{scope}/"), self.on_get_scope)
        router.add("GET", client_paths("/pushrules/{scope}/{kind}/"), self.on_get_kind)
        router.add("GET", rule, self.on_get_rule)
        router.add("PUT", rule, self.on_put_rule, body_schema=RULE_SCHEMA)
        router.add("DELETE", rule, self.on_delete_rule)
        router.add("GET", enabled, self.on_get_enabled)
        router.add("PUT", enabled, self.on_put_enabled, body_schema=ENABLED_SCHEMA)
        router.add("GET", actions, self.on_get_actions)
        router.add("PUT", actions, self.on_put_actions, body_schema=ACTIONS_SCHEMA)
        # Every other shape under /pushrules (no trailing slash, no scope/kind/rule id, an
        # empty rule id, an unknown attribute) is a 400, not a 404/405 (Synapse, SyTest).
        malformed = {
            "/pushrules": ("GET", "PUT", "DELETE"),
            "/pushrules/": ("PUT", "DELETE"),
            "/pushrules/{scope}": ("GET", "PUT", "DELETE"),
            "/pushrules/{scope}/": ("PUT", "DELETE"),
            "/pushrules/{scope}/{kind}": ("GET", "PUT", "DELETE"),
            "/pushrules/{scope}/{kind}/": ("PUT", "DELETE"),
            "/pushrules/{scope}/{kind}/{ruleId}/{attr}": ("GET", "PUT", "DELETE"),
        }
        for path, methods in malformed.items():
            for method in methods:
                router.add(method, client_paths(path), self.on_malformed)

    async def on_malformed(self, req: ApiRequest, **params: str) -> tuple[int, Any]:
        req.require_requester()
        if "scope" in params:
            check_scope(params["scope"])
        if "attr" in params:
            raise unrecognized("Unknown push rule attribute: must be 'enabled' or 'actions'")
        if req.method == "GET":
            raise unrecognized(_TRAILING_SLASH)
        raise unrecognized("A push rule is addressed as /pushrules/global/{kind}/{ruleId}")

    async def on_get_all(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        return 200, await self._push_rules.get_push_rules_json(r.user_id)

    async def on_get_scope(self, req: ApiRequest, scope: str) -> tuple[int, Any]:
        r = req.require_requester()
        check_scope(scope)
        return 200, await self._push_rules.get_ruleset(r.user_id)

    async def on_get_kind(self, req: ApiRequest, scope: str, kind: str) -> tuple[int, Any]:
        r = req.require_requester()
        check_scope(scope)
        return 200, await self._push_rules.get_kind(r.user_id, kind)

    async def on_get_rule(self, req: ApiRequest, scope: str, kind: str, ruleId: str  # noqa: N803
                          ) -> tuple[int, Any]:
        r = req.require_requester()
        check_scope(scope)
        return 200, await self._push_rules.get_rule(r.user_id, kind, ruleId)

    async def on_put_rule(self, req: ApiRequest, scope: str, kind: str, ruleId: str  # noqa: N803
                          ) -> tuple[int, Any]:
        r = req.require_requester()
        check_scope(scope)
        # An empty before/after is no anchor, as in Synapse.
        before = req.query("before") or None
        after = req.query("after") or None
        await self._push_rules.set_rule(r.user_id, kind, ruleId, req.body, before, after)
        return 200, {}

    async def on_delete_rule(self, req: ApiRequest, scope: str, kind: str,
                             ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_scope(scope)
        await self._push_rules.delete_rule(r.user_id, kind, ruleId)
        return 200, {}

    async def on_get_enabled(self, req: ApiRequest, scope: str, kind: str,
                             ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_scope(scope)
        return 200, {"enabled": await self._push_rules.get_enabled(r.user_id, kind, ruleId)}

    async def on_put_enabled(self, req: ApiRequest, scope: str, kind: str,
                             ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_scope(scope)
        await self._push_rules.set_enabled(r.user_id, kind, ruleId, req.body["enabled"])
        return 200, {}

    async def on_get_actions(self, req: ApiRequest, scope: str, kind: str,
                             ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_scope(scope)
        return 200, {"actions": await self._push_rules.get_actions(r.user_id, kind, ruleId)}

    async def on_put_actions(self, req: ApiRequest, scope: str, kind: str,
                             ruleId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_scope(scope)
        await self._push_rules.set_actions(r.user_id, kind, ruleId, req.body["actions"])
        return 200, {}
