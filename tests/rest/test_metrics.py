"""Prometheus metrics: /metrics on a metrics listener only, scraped and parsed with
prometheus_client's own parser; counters move with the requests that cause them and
labels carry route templates, never ids, tokens or content."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS, RoomTestCase, q

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SEND_ROUTE = "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"
DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "grafana",
                         "parley-dashboard.json")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("_sum", "_count")}


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when it does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class MetricsTestCase(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"listeners": [
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["client", "federation"]},
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["metrics"]},
        ]}

    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.hs.ports[1].getHost().port}/metrics"

    async def scrape_text(self) -> str:
        resp = await treq.get(self.metrics_url(), pool=self.pool)
        body = await resp.text("utf-8")
        self.assertEqual(resp.code, 200, body[:300])
        self.assertTrue(resp.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        return body

    async def scrape(self) -> Samples:
        return parse(await self.scrape_text())


class MetricsListenerTest(MetricsTestCase):
    async def test_only_metrics_listener_serves_metrics(self) -> None:
        resp = await self.request("GET", "/metrics")  # the client listener
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
        text = await self.scrape_text()
        self.assertIn("# TYPE parley_http_requests_total counter", text)
        # And the metrics listener still serves no API.
        saved, self.base_url = self.base_url, self.metrics_url()[:-len("/metrics")]
        try:
            resp = await self.request("GET", "/_matrix/client/versions")
        finally:
            self.base_url = saved
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")

    async def test_requests_counted_by_template_method_status(self) -> None:
        before = await self.scrape()
        for _ in range(3):
            resp = await self.request("GET", "/_matrix/client/versions")
            self.assertEqual(resp.code, 200)
        resp = await self.request("GET", "/_matrix/client/v3/no/such/path")
        self.assertEqual(resp.code, 404)
        after = await self.scrape()
        key = {"route": "/_matrix/client/versions", "method": "GET", "status": "200"}
        self.assertEqual(value(after, "parley_http_requests_total", **key)
                         - value(before, "parley_http_requests_total", **key), 3)
        lat = {"route": "/_matrix/client/versions", "method": "GET"}
        self.assertEqual(value(after, "parley_http_request_duration_seconds_count", **lat)
                         - value(before, "parley_http_request_duration_seconds_count", **lat), 3)
        self.assertGreaterEqual(
            value(after, "parley_http_request_duration_seconds_bucket", le="+Inf", **lat), 3)
        self.assertEqual(value(after, "parley_http_requests_total", route="(unmatched)",
                               method="GET", status="404"), 1)
        self.assertEqual(value(after, "parley_http_requests_in_flight"), 0)

    async def test_labels_are_templates_never_ids_or_content(self) -> None:
        token = await self.user("alice")
        room_id = await self.create_room(token)
        resp = await self.send(token, room_id, body="very-secret-message-body")
        self.assertEqual(resp.code, 200, resp)
        event_id = resp.json["event_id"]
        resp = await self.request("GET", f"{CS}/profile/{q('@alice:test.local')}", token=token)
        self.assertEqual(resp.code, 200, resp)
        # A strange method must not create a series of its own.
        resp = await self.request("BREW", "/_matrix/client/versions")
        text = await self.scrape_text()
        for secret in (room_id, event_id, "@alice", "alice:test.local", token,
                       "very-secret-message-body", "BREW", TEST_PASSWORD):
            self.assertNotIn(secret, text)
        samples = parse(text)
        self.assertEqual(value(samples, "parley_http_requests_total", route=SEND_ROUTE,
                               method="PUT", status="200"), 1)
        self.assertEqual(value(samples, "parley_http_requests_total",
                               route="/_matrix/client/v3/profile/{userId}", method="GET",
                               status="200"), 1)
        self.assertEqual(total(samples, "parley_http_requests_total", method="OTHER"), 1)


class DashboardTest(MetricsTestCase):
    async def test_dashboard_uses_only_exported_names(self) -> None:
        """contrib/grafana's dashboard queries exactly names /metrics exports."""
        exported: set[str] = set()
        for family in text_string_to_metric_families(await self.scrape_text()):
            exported.add(family.name)
            exported.update(family.name + sfx for sfx in _SUFFIXES.get(family.type, ()))
            exported.update(sample.name for sample in family.samples)
        with open(DASHBOARD, encoding="utf-8") as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
        used = {m for e in exprs for m in re.findall(r"\b((?:parley|process)_[a-z_]+)", e)}
        self.assertGreater(len(used), 20)
        self.assertEqual(used - exported, set())
        # And every Parley family is on the dashboard.
        ours = {name for name in exported if name.startswith("parley_")}
        shown = {n for n in ours if any(u == n or u.startswith(n + "_") for u in used)}
        families = {n for n in ours if not n.endswith(("_total", "_bucket", "_sum", "_count"))}
        self.assertEqual(families - shown, set())


class ActivityMetricsTest(MetricsTestCase):
    async def test_events_persisted_and_db_transactions(self) -> None:
        token = await self.user("alice")
        room_id = await self.create_room(token)
        before = await self.scrape()
        await self.send_ok(token, room_id)
        await self.send_ok(token, room_id)
        after = await self.scrape()
        self.assertEqual(value(after, "parley_events_persisted_total", kind="local")
                         - value(before, "parley_events_persisted_total", kind="local"), 2)
        # Store methods by the name given to db.run, with durations.
        ok_before = total(before, "parley_db_transactions_total", outcome="ok")
        ok_after = total(after, "parley_db_transactions_total", outcome="ok")
        self.assertGreater(ok_after, ok_before)
        self.assertGreater(total(after, "parley_db_transaction_duration_seconds_count"), 0)
        names = {dict(ls)["name"] for (n, ls) in after if n == "parley_db_transactions_total"}
        self.assertGreater(len(names), 3)
        self.assertGreaterEqual(value(after, "parley_db_pool_max_connections"), 1)
        self.assertGreaterEqual(value(after, "parley_db_pool_connections"), 1)
        self.assertIn(("parley_db_pool_queued", frozenset()), after)
        self.assertEqual(value(after, "parley_db_transactions_in_progress"), 0)

    async def test_process_and_hashing_gauges(self) -> None:
        samples = await self.scrape()
        self.assertGreater(value(samples, "process_resident_memory_bytes"), 1_000_000)
        self.assertGreater(value(samples, "process_open_fds"), 0)
        self.assertIn(("process_cpu_seconds_total", frozenset()), samples)
        self.assertEqual(value(samples, "parley_password_hashing_pending"), 0)
        self.assertGreaterEqual(value(samples, "parley_password_hashing_max_pending"), 1)
        self.assertEqual(value(samples, "parley_websocket_connections"), 0)

    async def test_sync_waiters_and_notifier_wakeups(self) -> None:
        token = await self.user("alice")
        room_id = await self.create_room(token)
        first = await self.request("GET", f"{CS}/sync?timeout=0", token=token)
        since = first.json["next_batch"]
        before = await self.scrape()
        self.assertEqual(value(before, "parley_sync_waiters"), 0)
        held = defer.ensureDeferred(self.request(
            "GET", f"{CS}/sync?timeout=600000&since={since}", token=token))
        samples = before
        for _ in range(200):
            samples = await self.scrape()
            if value(samples, "parley_sync_waiters") == 1:
                break
            await deferLater(reactor, 0.02)
        self.assertEqual(value(samples, "parley_sync_waiters"), 1)
        self.assertEqual(value(samples, "parley_http_requests_in_flight"), 1)
        await self.send_ok(token, room_id)
        resp = await held
        self.assertEqual(resp.code, 200, resp)
        after = await self.scrape()
        self.assertEqual(value(after, "parley_sync_waiters"), 0)
        self.assertGreaterEqual(value(after, "parley_notifier_woken_waiters_total")
                                - value(before, "parley_notifier_woken_waiters_total"), 1)
        self.assertGreater(value(after, "parley_notifier_notifications_total"),
                           value(before, "parley_notifier_notifications_total"))


class RateLimitMetricsTest(MetricsTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(),
                "rate_limits": {"login": {"per_second": 0.001, "burst": 1}}}

    async def test_rejections_by_class_and_security_events_by_type(self) -> None:
        await self.register("alice")
        before = await self.scrape()
        self.assertEqual(value(before, "parley_security_events_total",
                               type="register", outcome="success"), 1)
        resp = await self.login("alice", "wrong-password-1")
        self.assertEqual(resp.code, 403, resp)
        resp = await self.login("alice", "wrong-password-2")
        self.assertMatrixError(resp, 429, "M_LIMIT_EXCEEDED")
        after = await self.scrape()
        self.assertEqual(value(after, "parley_rate_limit_rejections_total", limit="login"), 1)
        self.assertEqual(total(after, "parley_rate_limit_rejections_total"), 1)
        self.assertEqual(total(after, "parley_security_events_total", outcome="failure")
                         - total(before, "parley_security_events_total", outcome="failure"), 1)
        self.assertEqual(value(after, "parley_http_requests_total",
                               route="/_matrix/client/v3/login", method="POST", status="429"), 1)
