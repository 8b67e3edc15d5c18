"""Applies the route table (:mod:`homeserver.http.rate_classes`) to one request, from
the dispatch point: per-IP classes before authentication (a flood costs no token
verification), per-user and body-keyed classes once the requester and the body are
known, and invite strikes when an invite is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.http.errors import MatrixError
from homeserver.http.rate_classes import Rule, rules_for
from homeserver.ratelimit.limiter import RateLimiter

if TYPE_CHECKING:
    from homeserver.http.server import ApiRequest


class RouteLimits:
    """What :class:`homeserver.http.server.MatrixResource` calls around a servlet."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def before_auth(self, api: ApiRequest) -> None:
        """The per-IP classes (the general ``api`` limit included)."""
        for rule in rules_for(api.route.method, api.route.template).rules:
            if rule.key == "ip":
                await self._check(api, rule, api.client.ip)

    async def after_auth(self, api: ApiRequest) -> None:
        """Per-user, per-account and body-keyed classes (body parsed, requester known)."""
        for rule in rules_for(api.route.method, api.route.template).rules:
            if rule.key == "ip":
                continue
            key = self._key(api, rule)
            if key is not None:
                await self._check(api, rule, key)

    def handler_failed(self, api: ApiRequest, error: MatrixError) -> None:
        """An invite refused (403: not allowed, blocked by a plugin, already a member...)
        is a strike against its sender."""
        if error.code != 403 or api.requester is None:
            return
        if any(r.limit == "invite" for r in rules_for(api.route.method, api.route.template).rules):
            self.limiter.invite_penalty.strike(api.requester.user_id)

    async def _check(self, api: ApiRequest, rule: Rule, key: str) -> None:
        user_id = api.requester.user_id if api.requester is not None else None
        cost = float(_body_size(api)) if rule.cost == "bytes" else 1.0
        if cost <= 0:
            return
        await self.limiter.check(rule.limit, key, user_id=user_id, ip=api.client.ip,
                                 cost=cost, client=api.client, key_kind=rule.key)

    @staticmethod
    def _key(api: ApiRequest, rule: Rule) -> str | None:
        if rule.key == "user":
            return api.requester.user_id if api.requester is not None else api.client.ip
        if rule.key == "origin":  # X-Matrix verified; None on routes without auth
            return api.origin
        body = api.body if isinstance(api.body, dict) else {}
        if rule.key == "account":
            return login_account(body)
        if rule.key.startswith("body."):
            value = body.get(rule.key[5:])
            return value if isinstance(value, str) and value else None
        return None


def login_account(body: dict[str, Any]) -> str | None:
    """The account a login body names (``identifier.user`` or the legacy ``user``),
    folded to a lower-case localpart so ``@Alice:hs`` and ``alice`` share a budget."""
    ident = body.get("identifier")
    name = ident.get("user") if isinstance(ident, dict) else body.get("user")
    if not isinstance(name, str) or not name:
        return None
    name = name.strip().lower()
    if name.startswith("@"):
        name = name[1:].split(":", 1)[0]
    return name or None


def _body_size(api: ApiRequest) -> int:
    content = api.raw.content
    if content is None:
        return 0
    size = content.seek(0, 2)
    content.seek(0)
    return int(size)
