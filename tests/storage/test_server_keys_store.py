"""The server key tables (schema/0040) on the engine under test: our key history
across rotations, and the remote key cache's upsert."""

from __future__ import annotations

from storage.stores.server_keys import RemoteKeyRecord, ServerKeyStore
from tests.harness import DatabaseTestCase


class ServerKeyStoreTest(DatabaseTestCase):
    async def test_rotation_history(self) -> None:
        store = ServerKeyStore(self.db)
        await store.note_current_key("ed25519:a", "AAA", 100)
        await store.note_current_key("ed25519:a", "AAA", 150)  # restart, same key
        self.assertEqual([(k.key_id, k.first_seen_ts, k.expired_ts)
                          for k in await store.own_keys()], [("ed25519:a", 100, None)])
        await store.note_current_key("ed25519:b", "BBB", 200)  # rotated
        self.assertEqual([(k.key_id, k.expired_ts) for k in await store.own_keys()],
                         [("ed25519:a", 200), ("ed25519:b", None)])
        await store.note_current_key("ed25519:c", "CCC", 300)
        self.assertEqual([(k.key_id, k.expired_ts) for k in await store.own_keys()],
                         [("ed25519:a", 200), ("ed25519:b", 300), ("ed25519:c", None)])
        await store.note_current_key("ed25519:a", "AAA", 400)  # rolled back to a
        self.assertEqual([(k.key_id, k.expired_ts) for k in await store.own_keys()],
                         [("ed25519:a", None), ("ed25519:b", 300), ("ed25519:c", 400)])

    async def test_remote_cache_upsert(self) -> None:
        store = ServerKeyStore(self.db)
        rec = RemoteKeyRecord("s.example", "ed25519:k", "KEY", 1000, None, 10, "s.example",
                              '{"a":1}')
        await store.store_remote_keys([rec, RemoteKeyRecord(
            "s.example", "ed25519:old", "OLD", 500, 500, 10, "s.example", '{"a":1}')])
        self.assertEqual(await store.remote_key("s.example", "ed25519:k"), rec)
        newer = RemoteKeyRecord("s.example", "ed25519:k", "KEY", 9000, None, 20, "n.example",
                                '{"a":2}')
        await store.store_remote_keys([newer])
        self.assertEqual(await store.remote_key("s.example", "ed25519:k"), newer)
        self.assertEqual([r.key_id for r in await store.remote_keys("s.example")],
                         ["ed25519:k", "ed25519:old"])
        self.assertIsNone(await store.remote_key("other.example", "ed25519:k"))
        await store.store_remote_keys([])
