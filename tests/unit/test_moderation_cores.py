"""The small cores of moderation (issue 15): which mxc URIs an event references, which
events a shadow-banned sender makes in vain, server-name validation and host matching,
and the listing of configured plus stored server blocks."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.handlers.admin_media import mxc_uris
from homeserver.handlers.event_creation import _shadow_dropped
from homeserver.handlers.server_blocks import ServerBlocks, _host, normalise_server_name
from homeserver.http.errors import MatrixError
from storage.stores.blocked_servers import BlockedServer


def event(type_: str, content: dict[str, Any], state_key: str | None = None,
          sender: str = "@a:hs") -> Event:
    pdu: dict[str, Any] = {"type": type_, "content": content, "sender": sender,
                           "room_id": "!r:hs"}
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event("$e", pdu, KNOWN_ROOM_VERSIONS["10"])


class MxcUrisTest(unittest.TestCase):
    def test_url_and_thumbnail(self) -> None:
        self.assertEqual(mxc_uris({"url": "mxc://a/1", "info": {"thumbnail_url": "mxc://b/2"}}),
                         ["mxc://a/1", "mxc://b/2"])

    def test_ignores_what_is_not_an_mxc_string(self) -> None:
        for content in ({"url": "https://x/y"}, {"url": 5}, {"info": "x"}, [], None,
                        {"info": {"thumbnail_url": None}}, {"body": "mxc://a/1"}):
            self.assertEqual(mxc_uris(content), [], content)


class ShadowDroppedTest(unittest.TestCase):
    def test_what_is_dropped(self) -> None:
        self.assertTrue(_shadow_dropped(event("m.room.message", {"body": "x"})))
        self.assertTrue(_shadow_dropped(event("m.room.topic", {"topic": "x"}, "")))
        self.assertTrue(_shadow_dropped(event("m.room.member", {"membership": "invite"},
                                              "@b:hs")))

    def test_own_membership_and_moderation_kept(self) -> None:
        for membership, target in (("join", "@a:hs"), ("leave", "@a:hs"),
                                   ("invite", "@a:hs"), ("ban", "@b:hs"),
                                   ("leave", "@b:hs")):
            self.assertFalse(_shadow_dropped(event("m.room.member", {"membership": membership},
                                                   target)), (membership, target))


class ServerNamesTest(unittest.TestCase):
    def test_normalise(self) -> None:
        self.assertEqual(normalise_server_name("Evil.Example:8448"), "evil.example:8448")
        self.assertEqual(normalise_server_name("[::1]:80"), "[::1]:80")
        self.assertEqual(normalise_server_name("1.2.3.4"), "1.2.3.4")
        for bad in ("", "a b", "a/b", "x:", "x:123456", "[zz]", "a" * 256, "ex\n"):
            self.assertRaises(MatrixError, normalise_server_name, bad)

    def test_host(self) -> None:
        self.assertEqual(_host("a.example:8448"), "a.example")
        self.assertEqual(_host("a.example"), "a.example")
        self.assertEqual(_host("[::1]:8448"), "[::1]")
        self.assertEqual(_host("[::1]"), "[::1]")


class FakeStore:
    def __init__(self, names: list[str]) -> None:
        self.rows = [BlockedServer(n, "@admin:hs", 1, None) for n in sorted(names)]

    async def list_all(self, offset: int, limit: int) -> tuple[list[BlockedServer], int]:
        return self.rows[offset:offset + limit], len(self.rows)


class ListBlocksTest(unittest.TestCase):
    async def test_pages_cross_config_and_stored(self) -> None:
        blocks = ServerBlocks("hs", None, FakeStore(["s1", "s2", "s3"]), None,  # type: ignore[arg-type]
                              ["c2", "C1"])
        everything = ["c1", "c2", "s1", "s2", "s3"]
        for offset in range(6):
            for limit in range(1, 7):
                entries, total = await blocks.list_blocks(offset, limit)
                self.assertEqual(total, 5)
                self.assertEqual([e.server_name for e in entries],
                                 everything[offset:offset + limit], (offset, limit))
        entries, _ = await blocks.list_blocks(0, 5)
        self.assertEqual([e.source for e in entries], ["config"] * 2 + ["admin"] * 3)
