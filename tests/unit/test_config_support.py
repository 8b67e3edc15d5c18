"""Config: well_known.support_contacts and well_known.support_page."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from homeserver.config import ConfigError, parse_config
from homeserver.config.model import SupportContact
from tests.unit.test_config import minimal


def with_support(**well_known: Any) -> dict:
    return minimal(well_known=well_known)


class SupportConfigTest(unittest.TestCase):
    def test_defaults_to_nothing(self) -> None:
        wk = parse_config(minimal()).well_known
        self.assertEqual(wk.support_contacts, [])
        self.assertIsNone(wk.support_page)

    def test_contacts_and_page(self) -> None:
        wk = parse_config(with_support(
            support_contacts=[
                {"role": "m.role.admin", "matrix_id": "@admin:example.org",
                 "email_address": "admin@example.org"},
                {"role": "m.role.security", "email_address": "security@example.org"},
                {"role": "org.example.moderation", "matrix_id": "@mods:example.net"},
            ],
            support_page="https://example.org/support",
        )).well_known
        self.assertEqual(wk.support_contacts, [
            SupportContact("m.role.admin", "@admin:example.org", "admin@example.org"),
            SupportContact("m.role.security", None, "security@example.org"),
            SupportContact("org.example.moderation", "@mods:example.net", None),
        ])
        self.assertEqual(wk.support_page, "https://example.org/support")

    def test_unknown_key_in_contact_is_named(self) -> None:
        with self.assertRaisesRegex(ConfigError, r"unknown key 'well_known\.support_contacts\.0\.phone'"):
            parse_config(with_support(support_contacts=[
                {"role": "m.role.admin", "email_address": "a@example.org", "phone": "123"}]))
        with self.assertRaisesRegex(ConfigError, r"unknown key 'well_known\.support_email'"):
            parse_config(with_support(support_email="a@example.org"))

    def test_role_is_required(self) -> None:
        with self.assertRaisesRegex(ConfigError,
                                    r"missing required key 'well_known\.support_contacts\.0\.role'"):
            parse_config(with_support(support_contacts=[{"email_address": "a@example.org"}]))

    def test_needs_matrix_id_or_email(self) -> None:
        with self.assertRaisesRegex(ConfigError,
                                    r"support_contacts\[0\]: needs matrix_id or email_address"):
            parse_config(with_support(support_contacts=[{"role": "m.role.admin"}]))

    def test_bad_roles(self) -> None:
        for role in ("admin", "m.role.owner", "Org.Example.Role", "org..x", ""):
            with self.assertRaises(ConfigError, msg=role):
                parse_config(with_support(support_contacts=[
                    {"role": role, "email_address": "a@example.org"}]))
        with self.assertRaisesRegex(ConfigError, r"the m\. namespace only has"):
            parse_config(with_support(support_contacts=[
                {"role": "m.role.owner", "email_address": "a@example.org"}]))

    def test_bad_matrix_id_and_email(self) -> None:
        with self.assertRaisesRegex(ConfigError, r"support_contacts\[0\]\.matrix_id"):
            parse_config(with_support(support_contacts=[
                {"role": "m.role.admin", "matrix_id": "admin@example.org"}]))
        with self.assertRaisesRegex(ConfigError, r"support_contacts\[1\]\.email_address"):
            parse_config(with_support(support_contacts=[
                {"role": "m.role.admin", "matrix_id": "@admin:example.org"},
                {"role": "m.role.admin", "email_address": "not an email"}]))

    def test_wrong_types(self) -> None:
        with self.assertRaisesRegex(ConfigError, r"'well_known\.support_contacts': expected array"):
            parse_config(with_support(support_contacts={"role": "m.role.admin"}))
        with self.assertRaisesRegex(ConfigError,
                                    r"'well_known\.support_contacts\.0\.matrix_id': expected string"):
            parse_config(with_support(support_contacts=[{"role": "m.role.admin", "matrix_id": 5}]))
        with self.assertRaisesRegex(ConfigError, r"'well_known\.support_page': expected string"):
            parse_config(with_support(support_page=["https://example.org"]))

    def test_support_page_must_be_http_url(self) -> None:
        for page in ("example.org/support", "javascript:alert(1)", "https://exa mple.org", ""):
            with self.assertRaisesRegex(ConfigError, r"well_known\.support_page", msg=page):
                parse_config(with_support(support_page=page))
        self.assertEqual(parse_config(with_support(support_page="http://localhost:8080/help"))
                         .well_known.support_page, "http://localhost:8080/help")
