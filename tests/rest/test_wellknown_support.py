"""GET /.well-known/matrix/support from well_known.support_contacts / support_page."""

from __future__ import annotations

from typing import Any

from tests.harness import HomeserverTestCase

SUPPORT = "/.well-known/matrix/support"


class NotConfiguredTest(HomeserverTestCase):
    async def test_404_when_nothing_configured(self) -> None:
        resp = await self.request("GET", SUPPORT)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        self.assertEqual(resp.header("Access-Control-Allow-Origin"), "*")

    async def test_post_is_405(self) -> None:
        resp = await self.request("POST", SUPPORT, {})
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")


class FullyConfiguredTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"well_known": {
            "support_contacts": [
                {"role": "m.role.admin", "matrix_id": "@admin:example.org",
                 "email_address": "admin@example.org"},
                {"role": "m.role.security", "email_address": "security@example.org"},
                {"role": "org.example.abuse", "matrix_id": "@abuse:other.example"},
            ],
            "support_page": "https://example.org/support.html",
        }}

    async def test_contacts_and_page(self) -> None:
        resp = await self.request("GET", SUPPORT)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.header("Content-Type"), "application/json")
        self.assertEqual(resp.header("Access-Control-Allow-Origin"), "*")
        self.assertEqual(resp.json, {
            "contacts": [
                {"matrix_id": "@admin:example.org", "email_address": "admin@example.org",
                 "role": "m.role.admin"},
                {"email_address": "security@example.org", "role": "m.role.security"},
                {"matrix_id": "@abuse:other.example", "role": "org.example.abuse"},
            ],
            "support_page": "https://example.org/support.html",
        })

    async def test_no_token_needed_and_a_bad_one_is_ignored(self) -> None:
        resp = await self.request("GET", SUPPORT, token="bogus")
        self.assertEqual(resp.code, 200, resp)


class PageOnlyTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"well_known": {"support_page": "https://example.org/help"}}

    async def test_page_only(self) -> None:
        resp = await self.request("GET", SUPPORT)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"support_page": "https://example.org/help"})


class ContactsOnlyTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"well_known": {"support_contacts": [
            {"role": "m.role.admin", "email_address": "admin@example.org"}]}}

    async def test_contacts_only(self) -> None:
        resp = await self.request("GET", SUPPORT)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"contacts": [
            {"email_address": "admin@example.org", "role": "m.role.admin"}]})


class EmptyContactsTest(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"well_known": {"support_contacts": []}}

    async def test_empty_list_is_not_configured(self) -> None:
        # The spec requires at least one contact when only contacts are given.
        self.assertMatrixError(await self.request("GET", SUPPORT), 404, "M_NOT_FOUND")
