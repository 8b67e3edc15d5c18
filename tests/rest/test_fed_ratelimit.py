"""Per-origin rate limits on federation requests and EDU floods (issue 16): the
``federation_origin`` class counts every X-Matrix-authenticated request per origin
server; past it that origin gets 429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``
while other origins are served, on the in-process backend and on Redis; the config
knobs are read; one transaction's EDUs share a budget per EDU type."""

from __future__ import annotations

import secrets
from typing import Any

from federation.inbound_edus import TXN_BUDGET, EduBudget, edu_cost
from federation.x_matrix import sign_request
from homeserver.config.model import RateLimitConfig, RateLimitsConfig
from homeserver.http.rate_classes import rules_for
from tests.harness import make_config
from tests.rest.federation_helpers import FakeRemote, NowhereDiscovery
from tests.rest.room_helpers import RoomTestCase
from tests.rest.test_rate_limits import delete_prefix, redis_overrides, require_redis

SEND = "/_matrix/federation/v1/send/{}"


class FedLimitTestCase(RoomTestCase):
    limit = {"per_second": 0.5, "burst": 3}

    def config_overrides(self) -> dict[str, Any]:
        return {"federation": {"enabled": True},
                "rate_limits": {"federation_origin": self.limit}}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.spammy = FakeRemote("spammy.test")
        self.honest = FakeRemote("honest.test")
        for remote in (self.spammy, self.honest):
            await remote.trust_on(self.hs)
        assert self.hs.federation is not None
        self.hs.federation.client.discovery = NowhereDiscovery()  # type: ignore[assignment]
        self.txn = 0

    async def send(self, remote: FakeRemote, edus: list[Any] | None = None) -> Any:
        self.txn += 1
        path = SEND.format(f"t{self.txn}")
        body: dict[str, Any] = {"origin": remote.name,
                                "origin_server_ts": self.clock.time_msec(), "pdus": []}
        if edus is not None:
            body["edus"] = edus
        header = sign_request(remote.signing_key, remote.name, "test.local", "PUT", path, body)
        return await self.request("PUT", path, body, headers={"Authorization": header})


class OriginLimitTests(FedLimitTestCase):
    async def test_origin_over_budget_gets_429_others_served(self) -> None:
        for _ in range(3):
            resp = await self.send(self.spammy)
            self.assertEqual(resp.code, 200, resp)
        resp = await self.send(self.spammy)
        self.assertEqual(resp.code, 429, resp)
        self.assertEqual(resp.json["errcode"], "M_LIMIT_EXCEEDED")
        self.assertEqual(resp.json["retry_after_ms"], 2000)
        # Another server (same IP here) has its own budget.
        for _ in range(3):
            resp = await self.send(self.honest)
            self.assertEqual(resp.code, 200, resp)
        # Refilled after the wait it was told.
        self.advance(2.0)
        self.assertEqual((await self.send(self.spammy)).code, 200)
        self.assertEqual((await self.send(self.spammy)).code, 429)
        value = self.hs.metrics_registry.get_sample_value(
            "parley_rate_limit_rejections_total", {"limit": "federation_origin"})
        self.assertEqual(value, 2.0)
        # One rate_limited security event naming the origin (one per class, key, minute).
        events = await self.hs.stores.security_events.list_events(event_type="rate_limited")
        self.assertEqual([(e.target, e.reason) for e in events],
                         [("spammy.test", "federation_origin")])

    async def test_unsigned_requests_cost_no_origin_budget(self) -> None:
        # A forged origin is refused before any budget is spent in its name.
        for _ in range(5):
            resp = await self.request("PUT", SEND.format("x"), {"pdus": []},
                                      headers={"Authorization": 'X-Matrix origin="spammy.test"'
                                               ',key="ed25519:fake",sig="AAAA"'})
            self.assertEqual(resp.code, 401, resp)
        self.assertEqual((await self.send(self.spammy)).code, 200)

    def test_route_table(self) -> None:
        def classes(method: str, template: str) -> set[str]:
            return {r.limit for r in rules_for(method, template).rules}

        self.assertEqual(classes("PUT", "/_matrix/federation/v1/send/{txnId}"),
                         {"api", "federation_origin"})
        self.assertEqual(classes("GET", "/_matrix/federation/v1/query/profile"),
                         {"api", "federation_origin"})
        self.assertEqual(classes("GET", "/_matrix/federation/v1/openid/userinfo"), {"api"})


class EduBudgetTests(FedLimitTestCase):
    limit = {"per_second": 1000, "burst": 100_000}

    async def test_typing_flood_bounded_per_transaction(self) -> None:
        edus = [{"edu_type": "m.typing",
                 "content": {"user_id": self.spammy.user(f"u{i}"), "room_id": "!r:spammy.test",
                             "typing": True}} for i in range(TXN_BUDGET["m.typing"] + 10)]
        resp = await self.send(self.spammy, edus)
        self.assertEqual(resp.code, 200, resp)
        assert self.hs.federation is not None
        inbound = self.hs.federation.sender.inbound_edus
        self.assertEqual(inbound.over_budget, 10)
        # The next transaction has a budget of its own.
        resp = await self.send(self.spammy, edus[:5])
        self.assertEqual(inbound.over_budget, 10)

    def test_costs_and_budget(self) -> None:
        to_device = {"sender": "@a:x", "type": "m.test", "message_id": "m",
                     "messages": {"@b:y": {"D1": {}, "D2": {}}, "@c:y": {"*": {}}}}
        self.assertEqual(edu_cost("m.direct_to_device", to_device), 3)
        receipts = {"!r:x": {"m.read": {"@a:x": {}, "@b:x": {}}}, "!s:x": {"m.read": {"@a:x": {}}}}
        self.assertEqual(edu_cost("m.receipt", receipts), 3)
        self.assertEqual(edu_cost("m.presence", {"push": [{}] * 5}), 5)
        self.assertEqual(edu_cost("m.typing", {}), 1)
        budget = EduBudget({"m.receipt": 4})
        self.assertTrue(budget.take("m.receipt", 3))
        self.assertFalse(budget.take("m.receipt", 2))  # nothing spent past the budget
        self.assertTrue(budget.take("m.receipt", 1))
        self.assertTrue(budget.take("org.unknown", 10**6))


class ConfigTests(FedLimitTestCase):
    def test_knobs_read(self) -> None:
        self.assertEqual(self.hs.config.rate_limits.federation_origin, RateLimitConfig(0.5, 3))
        self.assertEqual(RateLimitsConfig().federation_origin, RateLimitConfig(50, 500))

    def test_bad_values_refused(self) -> None:
        with self.assertRaisesRegex(Exception, "federation_origin"):
            make_config(self.mktemp(), "sqlite",
                        rate_limits={"federation_origin": {"per_second": 1, "burst": 0}})


class RedisOriginLimitTests(OriginLimitTests):
    async def setUp(self) -> None:  # type: ignore[override]
        require_redis()
        self.prefix = f"parley-test-{secrets.token_hex(6)}:"
        await super().setUp()
        self.assertEqual(self.hs.rate_limiter.backend.name, "redis")  # type: ignore[union-attr]

    async def tearDown(self) -> None:  # type: ignore[override]
        await super().tearDown()
        await delete_prefix(self.prefix)

    def config_overrides(self) -> dict[str, Any]:
        redis = redis_overrides(self.prefix)
        base = super().config_overrides()
        return {**base, "redis": redis["redis"],
                "rate_limits": {**base["rate_limits"], **redis["rate_limits"]}}
