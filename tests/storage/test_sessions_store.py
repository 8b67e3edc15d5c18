"""Sessions and refresh-token families in the store, including concurrent spends."""

from __future__ import annotations

from twisted.internet import defer

from storage.stores.sessions import AccountUnavailableError, RefreshOutcome, SessionStore
from storage.stores.users import UserStore
from tests.harness import DatabaseTestCase


class SessionStoreTest(DatabaseTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await UserStore(self.db).create_user("@a:hs", None, 1000)

    async def test_refresh_rotation_and_reuse(self) -> None:
        store = SessionStore(self.db)
        await store.create_session("s1", "@a:hs", "D1", 1000, "h0", 10_000)
        ok = await store.rotate_refresh_token("h0", "h1", 20_000, 2000)
        self.assertIs(ok.outcome, RefreshOutcome.OK)
        reused = await store.rotate_refresh_token("h0", "h2", 20_000, 3000)
        self.assertIs(reused.outcome, RefreshOutcome.REUSED)
        self.assertFalse(await store.is_active("s1"))
        after = await store.rotate_refresh_token("h1", "h3", 20_000, 4000)
        self.assertIs(after.outcome, RefreshOutcome.REVOKED)

    async def test_expired_and_unknown(self) -> None:
        store = SessionStore(self.db)
        await store.create_session("s1", "@a:hs", "D1", 1000, "h0", 5000)
        self.assertIs((await store.rotate_refresh_token("nope", "x", 1, 1)).outcome,
                      RefreshOutcome.UNKNOWN)
        self.assertIs((await store.rotate_refresh_token("h0", "h1", 9000, 6000)).outcome,
                      RefreshOutcome.EXPIRED)

    async def test_concurrent_spends_only_one_wins(self) -> None:
        store = SessionStore(self.db)
        await store.create_session("s1", "@a:hs", "D1", 1000, "h0", 10_000)
        results = await defer.gatherResults([
            defer.ensureDeferred(store.rotate_refresh_token("h0", f"n{i}", 20_000, 2000))
            for i in range(4)
        ])
        outcomes = sorted(r.outcome.value for r in results)
        self.assertEqual(outcomes.count("ok"), 1, outcomes)
        # The first loser detects reuse and revokes; later ones find the session revoked.
        self.assertGreaterEqual(outcomes.count("reused"), 1, outcomes)
        self.assertEqual(outcomes.count("reused") + outcomes.count("revoked"), 3, outcomes)
        self.assertFalse(await store.is_active("s1"))

    async def test_new_login_on_device_ends_old_session(self) -> None:
        store = SessionStore(self.db)
        await store.create_session("s1", "@a:hs", "D1", 1000, None, None)
        await store.create_session("s2", "@a:hs", "D2", 1000, None, None)
        started = await store.create_session("s3", "@a:hs", "D1", 2000, None, None)
        self.assertEqual(started.revoked, ["s1"])
        self.assertFalse(started.is_guest)
        self.assertTrue(await store.is_active("s2"))
        self.assertEqual(sorted(await store.revoke_user_sessions("@a:hs", "t", 3000, "s3")), ["s2"])
        self.assertTrue(await store.is_active("s3"))

    async def test_privileges_come_from_the_users_table(self) -> None:
        store, users = SessionStore(self.db), UserStore(self.db)
        await users.create_user("@g:hs", None, 1000, is_guest=True)
        started = await store.create_session("sg", "@g:hs", "G1", 1000, "hg", 10_000)
        self.assertTrue(started.is_guest)
        refreshed = await store.rotate_refresh_token("hg", "hg2", 20_000, 2000)
        self.assertIs(refreshed.outcome, RefreshOutcome.OK)
        self.assertTrue(refreshed.is_guest)
        ok = await store.rotate_refresh_token("h-none", "x", 20_000, 2000)
        self.assertFalse(ok.is_guest)

    async def test_no_session_for_unknown_or_deactivated_user(self) -> None:
        store, users = SessionStore(self.db), UserStore(self.db)
        with self.assertRaises(AccountUnavailableError):
            await store.create_session("sx", "@nobody:hs", "D1", 1000, None, None)
        self.assertIsNone(await store.get_session("sx"))
        await store.create_session("s1", "@a:hs", "D1", 1000, "h0", 10_000)
        await users.deactivate("@a:hs", 1500)
        with self.assertRaises(AccountUnavailableError):
            await store.create_session("s2", "@a:hs", "D2", 2000, None, None)
        # A refresh after deactivation fails and ends the session.
        result = await store.rotate_refresh_token("h0", "h1", 20_000, 2000)
        self.assertIs(result.outcome, RefreshOutcome.REVOKED)
        self.assertFalse(await store.is_active("s1"))
