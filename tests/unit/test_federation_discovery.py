"""Server discovery with a fake SRV resolver and a fake well-known fetcher on a test
clock: the spec's steps in order, and caching with TTLs."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, task
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.trial import unittest

from federation.discovery import (
    SRV_FAILURE_CACHE_S,
    WELL_KNOWN_DEFAULT_CACHE_S,
    WELL_KNOWN_INVALID_CACHE_S,
    WELL_KNOWN_MAX_CACHE_S,
    WELL_KNOWN_MIN_CACHE_S,
    ServerDiscovery,
    ServerTarget,
    split_host_port,
)
from homeserver.clock import Clock


def srv(target: str, port: int, priority: int = 10, weight: int = 0,
        ttl: int = 300) -> dns.RRHeader:
    return dns.RRHeader(name="x", type=dns.SRV, ttl=ttl,
                        payload=dns.Record_SRV(priority, weight, port, target, ttl=ttl))


class FakeResolver:
    def __init__(self) -> None:
        self.records: dict[str, list[dns.RRHeader]] = {}
        self.calls: list[str] = []

    def lookupService(self, name: str) -> defer.Deferred[Any]:  # noqa: N802
        self.calls.append(name)
        if name not in self.records:
            return defer.fail(DNSNameError(name))
        return defer.succeed((self.records[name], [], []))


class FakeFetcher:
    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str | None, bytes] | Exception] = {}
        self.calls: list[str] = []

    async def __call__(self, url: str) -> tuple[int, str | None, bytes]:
        self.calls.append(url)
        answer = self.answers.get(url, ConnectionRefusedError())
        if isinstance(answer, Exception):
            raise answer
        return answer


def well_known(server: str, cache_control: str | None = None) -> tuple[int, str | None, bytes]:
    return 200, cache_control, json.dumps({"m.server": server}).encode()


WK = "https://{}/.well-known/matrix/server"


class DiscoveryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.time = task.Clock()
        self.time.advance(1_000_000)
        self.resolver = FakeResolver()
        self.fetcher = FakeFetcher()
        self.discovery = ServerDiscovery(Clock(self.time), self.resolver, self.fetcher)

    async def resolve(self, name: str) -> ServerTarget:
        return await self.discovery.resolve(name)

    async def test_ip_literals(self) -> None:
        self.assertEqual(await self.resolve("1.2.3.4"),
                         ServerTarget("1.2.3.4", "1.2.3.4", (("1.2.3.4", 8448),)))
        self.assertEqual(await self.resolve("1.2.3.4:99"),
                         ServerTarget("1.2.3.4:99", "1.2.3.4", (("1.2.3.4", 99),)))
        self.assertEqual(await self.resolve("[2001:db8::1]:443"),
                         ServerTarget("[2001:db8::1]:443", "2001:db8::1", (("2001:db8::1", 443),)))
        self.assertEqual(self.fetcher.calls, [])
        self.assertEqual(self.resolver.calls, [])

    async def test_explicit_port_skips_well_known_and_srv(self) -> None:
        self.assertEqual(await self.resolve("example.org:8000"),
                         ServerTarget("example.org:8000", "example.org", (("example.org", 8000),)))
        self.assertEqual(self.fetcher.calls, [])
        self.assertEqual(self.resolver.calls, [])

    async def test_well_known_delegation_variants(self) -> None:
        self.fetcher.answers[WK.format("a.org")] = well_known("matrix.a.org:4443")
        self.assertEqual(await self.resolve("a.org"), ServerTarget(
            "matrix.a.org:4443", "matrix.a.org", (("matrix.a.org", 4443),)))
        self.fetcher.answers[WK.format("b.org")] = well_known("10.1.2.3")
        self.assertEqual(await self.resolve("b.org"),
                         ServerTarget("10.1.2.3", "10.1.2.3", (("10.1.2.3", 8448),)))
        # Delegated name without port: SRV on the delegated name, Host is that name.
        self.fetcher.answers[WK.format("c.org")] = well_known("hs.c.org")
        self.resolver.records["_matrix-fed._tcp.hs.c.org"] = [srv("box.c.org", 8008)]
        self.assertEqual(await self.resolve("c.org"),
                         ServerTarget("hs.c.org", "hs.c.org", (("box.c.org", 8008),)))
        # ... and no SRV at all: the delegated name on 8448.
        self.fetcher.answers[WK.format("d.org")] = well_known("hs.d.org")
        self.assertEqual(await self.resolve("d.org"),
                         ServerTarget("hs.d.org", "hs.d.org", (("hs.d.org", 8448),)))
        self.assertIn("_matrix._tcp.hs.d.org", self.resolver.calls)

    async def test_srv_fallbacks_without_well_known(self) -> None:
        self.resolver.records["_matrix-fed._tcp.e.org"] = [
            srv("slow.e.org", 1, priority=20), srv("b.e.org", 2, weight=5),
            srv("a.e.org", 3, weight=10)]
        self.resolver.records["_matrix._tcp.e.org"] = [srv("old.e.org", 9)]
        self.assertEqual(await self.resolve("e.org"), ServerTarget(
            "e.org", "e.org", (("a.e.org", 3), ("b.e.org", 2), ("slow.e.org", 1))))
        # Only the deprecated record.
        self.resolver.records["_matrix._tcp.f.org"] = [srv("old.f.org", 9)]
        self.assertEqual(await self.resolve("f.org"),
                         ServerTarget("f.org", "f.org", (("old.f.org", 9),)))
        # Nothing: port 8448.
        self.assertEqual(await self.resolve("g.org"),
                         ServerTarget("g.org", "g.org", (("g.org", 8448),)))
        # "." means no service.
        self.resolver.records["_matrix-fed._tcp.h.org"] = [srv("", 0)]
        self.assertEqual((await self.resolve("h.org")).addresses, (("h.org", 8448),))

    async def test_invalid_well_known_falls_back(self) -> None:
        for body in (b"not json", b"[]", b'{"m.server": 5}', b'{"m.server": "a b:1"}',
                     b'{"m.server": "x.org:99999"}', b'{}'):
            self.fetcher.answers[WK.format("i.org")] = (200, None, body)
            self.discovery = ServerDiscovery(Clock(self.time), self.resolver, self.fetcher)
            self.assertEqual(await self.resolve("i.org"),
                             ServerTarget("i.org", "i.org", (("i.org", 8448),)), body)
        self.fetcher.answers[WK.format("j.org")] = (404, None, b"")
        self.assertEqual((await self.resolve("j.org")).host_header, "j.org")
        self.fetcher.answers[WK.format("k.org")] = (200, None, b" " * 60_000)
        self.assertEqual((await self.resolve("k.org")).host_header, "k.org")

    async def test_well_known_cached_with_bounds(self) -> None:
        url = WK.format("a.org")
        cases = [(None, WELL_KNOWN_DEFAULT_CACHE_S), ("max-age=10", WELL_KNOWN_MIN_CACHE_S),
                 ("public, max-age=7200", 7200.0),
                 ("max-age=99999999", WELL_KNOWN_MAX_CACHE_S)]
        for cache_control, expected in cases:
            self.discovery = ServerDiscovery(Clock(self.time), self.resolver, self.fetcher)
            self.fetcher.calls.clear()
            self.fetcher.answers[url] = well_known("x.a.org:1", cache_control)
            await self.resolve("a.org")
            self.time.advance(expected - 1)
            await self.resolve("a.org")
            self.assertEqual(len(self.fetcher.calls), 1, cache_control)
            self.time.advance(2)
            self.fetcher.answers[url] = well_known("y.a.org:2", cache_control)
            self.assertEqual((await self.resolve("a.org")).host_header, "y.a.org:2")
            self.assertEqual(len(self.fetcher.calls), 2, cache_control)

    async def test_failed_well_known_cached_for_an_hour(self) -> None:
        await self.resolve("a.org")
        self.fetcher.answers[WK.format("a.org")] = well_known("x.a.org:1")
        self.time.advance(WELL_KNOWN_INVALID_CACHE_S - 1)
        self.assertEqual((await self.resolve("a.org")).host_header, "a.org")
        self.time.advance(2)
        self.assertEqual((await self.resolve("a.org")).host_header, "x.a.org:1")

    async def test_srv_cached_for_ttl(self) -> None:
        self.resolver.records["_matrix-fed._tcp.s.org"] = [srv("one.s.org", 1, ttl=600)]
        await self.resolve("s.org")
        self.resolver.records["_matrix-fed._tcp.s.org"] = [srv("two.s.org", 2, ttl=600)]
        self.time.advance(599)
        self.assertEqual((await self.resolve("s.org")).addresses, (("one.s.org", 1),))
        self.time.advance(2)
        self.assertEqual((await self.resolve("s.org")).addresses, (("two.s.org", 2),))
        # A failed lookup is cached too, briefly.
        self.resolver.calls.clear()
        await self.discovery.srv("_matrix-fed._tcp.none.org")
        await self.discovery.srv("_matrix-fed._tcp.none.org")
        self.assertEqual(self.resolver.calls, ["_matrix-fed._tcp.none.org"])
        self.time.advance(SRV_FAILURE_CACHE_S + 1)
        await self.discovery.srv("_matrix-fed._tcp.none.org")
        self.assertEqual(len(self.resolver.calls), 2)

    async def test_invalid_names(self) -> None:
        for name in ("a b", "a.org:0", "a.org:x", "[::1", "a/b"):
            with self.assertRaises(ValueError, msg=name):
                await self.resolve(name)

    def test_split_host_port(self) -> None:
        self.assertEqual(split_host_port("a.org"), ("a.org", None))
        self.assertEqual(split_host_port("[::1]:80"), ("::1", 80))
        self.assertEqual(split_host_port("a.org:443"), ("a.org", 443))
