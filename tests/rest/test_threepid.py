"""3PID endpoints: Parley stores no email addresses or phone numbers and uses no
identity server, and answers as Synapse does when none is configured."""

from __future__ import annotations

from typing import Any

from tests.harness import HomeserverTestCase

V3 = "/_matrix/client/v3"
EMAIL_BODY = {"client_secret": "s3cret.=_-", "email": "alice@example.org", "send_attempt": 1}
MSISDN_BODY = {"client_secret": "s3cret", "country": "GB", "phone_number": "07700900001",
               "send_attempt": 1}

# path -> (valid body, errcode Synapse gives without email/SMS)
REQUEST_TOKEN: dict[str, tuple[dict[str, Any], str]] = {
    "/register/email/requestToken": (EMAIL_BODY, "M_UNKNOWN"),
    "/register/msisdn/requestToken": (MSISDN_BODY, "M_UNKNOWN"),
    "/account/3pid/email/requestToken": (EMAIL_BODY, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
    "/account/3pid/msisdn/requestToken": (MSISDN_BODY, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
    "/account/password/email/requestToken": (EMAIL_BODY, "M_UNKNOWN"),
    "/account/password/msisdn/requestToken": (MSISDN_BODY, "M_UNKNOWN"),
}
ADD_BODY = {"client_secret": "s3cret", "sid": "abc123"}
BIND_BODY = {"client_secret": "s3cret", "sid": "abc123", "id_server": "127.0.0.1:9",
             "id_access_token": "tok"}
REMOVE_BODY = {"medium": "email", "address": "alice@example.org"}


class ThreepidListTest(HomeserverTestCase):
    async def test_list_is_empty(self) -> None:
        token = (await self.register("tess"))["access_token"]
        for version in ("v3", "r0"):
            resp = await self.request("GET", f"/_matrix/client/{version}/account/3pid", token=token)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json, {"threepids": []})

    async def test_list_needs_a_valid_token(self) -> None:
        resp = await self.request("GET", f"{V3}/account/3pid")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", f"{V3}/account/3pid", token="not-a-token")
        self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")

    async def test_capability_says_3pid_changes_disabled(self) -> None:
        token = (await self.register("tess"))["access_token"]
        resp = await self.request("GET", f"{V3}/capabilities", token=token)
        self.assertEqual(resp.json["capabilities"]["m.3pid_changes"], {"enabled": False})


class RequestTokenTest(HomeserverTestCase):
    async def test_refused_with_synapse_errcodes(self) -> None:
        for path, (body, errcode) in REQUEST_TOKEN.items():
            resp = await self.request("POST", V3 + path, body)
            self.assertMatrixError(resp, 400, errcode)
            self.assertNotIn("sid", resp.json)

    async def test_no_token_needed_and_a_token_changes_nothing(self) -> None:
        # Spec and Synapse: no access token (password reset is for users who cannot log in).
        token = (await self.register("tess"))["access_token"]
        for path, (body, errcode) in REQUEST_TOKEN.items():
            resp = await self.request("POST", V3 + path, body, token=token)
            self.assertMatrixError(resp, 400, errcode)

    async def test_r0_paths(self) -> None:
        resp = await self.request("POST", "/_matrix/client/r0/register/email/requestToken",
                                  EMAIL_BODY)
        self.assertMatrixError(resp, 400, "M_UNKNOWN")

    async def test_missing_fields(self) -> None:
        for path, (body, _) in REQUEST_TOKEN.items():
            for field in body:
                partial = {k: v for k, v in body.items() if k != field}
                resp = await self.request("POST", V3 + path, partial)
                self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
                self.assertIn(field, resp.json["error"])

    async def test_wrong_types(self) -> None:
        for path, (body, _) in REQUEST_TOKEN.items():
            for field, bad in (("send_attempt", "1"), ("client_secret", 5), ("next_link", 1),
                               ("id_server", [])):
                resp = await self.request("POST", V3 + path, {**body, field: bad})
                self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", V3 + "/register/email/requestToken",
                                  {**EMAIL_BODY, "email": None})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", V3 + "/register/msisdn/requestToken",
                                  {**MSISDN_BODY, "phone_number": 7700900001})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_invalid_client_secret(self) -> None:
        for secret in ("", "has space", "x" * 256, "ünïcode"):
            resp = await self.request("POST", V3 + "/account/3pid/email/requestToken",
                                      {**EMAIL_BODY, "client_secret": secret})
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_malformed_bodies(self) -> None:
        path = V3 + "/account/password/email/requestToken"
        self.assertMatrixError(await self.request("POST", path, raw_body=b"{nope"), 400, "M_NOT_JSON")
        self.assertMatrixError(await self.request("POST", path, raw_body=b"[]"), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.request("POST", path, raw_body=b""), 400,
                               "M_MISSING_PARAM")

    async def test_get_is_405(self) -> None:
        resp = await self.request("GET", V3 + "/register/email/requestToken")
        self.assertMatrixError(resp, 405, "M_UNRECOGNIZED")


class AddBindRemoveTest(HomeserverTestCase):
    async def asyncSetUpUser(self) -> str:  # noqa: N802
        return (await self.register("tess"))["access_token"]

    async def test_add_fails_without_uia(self) -> None:
        token = await self.asyncSetUpUser()
        resp = await self.request("POST", f"{V3}/account/3pid/add", ADD_BODY, token=token)
        self.assertMatrixError(resp, 400, "M_THREEPID_AUTH_FAILED")
        self.assertNotIn("flows", resp.json)
        # An auth dict changes nothing: there is no 3PID session to complete.
        resp = await self.request("POST", f"{V3}/account/3pid/add",
                                  {**ADD_BODY, "auth": {"type": "m.login.dummy"}}, token=token)
        self.assertMatrixError(resp, 400, "M_THREEPID_AUTH_FAILED")
        listed = await self.request("GET", f"{V3}/account/3pid", token=token)
        self.assertEqual(listed.json, {"threepids": []})

    async def test_add_validates_body(self) -> None:
        token = await self.asyncSetUpUser()
        path = f"{V3}/account/3pid/add"
        resp = await self.request("POST", path, {"client_secret": "s3cret"}, token=token)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        self.assertIn("sid", resp.json["error"])
        resp = await self.request("POST", path, {**ADD_BODY, "sid": 1}, token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", path, {**ADD_BODY, "auth": "password"}, token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", path, {**ADD_BODY, "client_secret": "a/b"}, token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.request("POST", path, raw_body=b"{", token=token),
                               400, "M_NOT_JSON")

    async def test_legacy_add(self) -> None:
        token = await self.asyncSetUpUser()
        path = f"{V3}/account/3pid"
        resp = await self.request("POST", path, {"three_pid_creds": BIND_BODY}, token=token)
        self.assertMatrixError(resp, 400, "M_THREEPID_AUTH_FAILED")
        resp = await self.request("POST", path, {"three_pid_creds": ADD_BODY}, token=token)
        self.assertMatrixError(resp, 400, "M_THREEPID_AUTH_FAILED")
        resp = await self.request("POST", path, {}, token=token)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("POST", path, {"three_pid_creds": {"sid": "x"}}, token=token)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        self.assertIn("client_secret", resp.json["error"])
        resp = await self.request("POST", path, {"three_pid_creds": "creds"}, token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_bind_refused(self) -> None:
        token = await self.asyncSetUpUser()
        path = f"{V3}/account/3pid/bind"
        resp = await self.request("POST", path, BIND_BODY, token=token)
        self.assertMatrixError(resp, 400, "M_SERVER_NOT_TRUSTED")
        for field in BIND_BODY:
            partial = {k: v for k, v in BIND_BODY.items() if k != field}
            resp = await self.request("POST", path, partial, token=token)
            self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("POST", path, {**BIND_BODY, "id_server": 9}, token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_unbind_and_delete_report_no_support(self) -> None:
        token = await self.asyncSetUpUser()
        for op in ("unbind", "delete"):
            path = f"{V3}/account/3pid/{op}"
            for body in (REMOVE_BODY, {**REMOVE_BODY, "id_server": "id.example.org"},
                         {"medium": "msisdn", "address": "447700900001"}):
                resp = await self.request("POST", path, body, token=token)
                self.assertEqual(resp.code, 200, resp)
                self.assertEqual(resp.json, {"id_server_unbind_result": "no-support"})

    async def test_unbind_and_delete_validate_body(self) -> None:
        token = await self.asyncSetUpUser()
        for op in ("unbind", "delete"):
            path = f"{V3}/account/3pid/{op}"
            resp = await self.request("POST", path, {"medium": "email"}, token=token)
            self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
            self.assertIn("address", resp.json["error"])
            resp = await self.request("POST", path, {"address": "a@b.c"}, token=token)
            self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
            resp = await self.request("POST", path, {**REMOVE_BODY, "medium": "fax"}, token=token)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
            resp = await self.request("POST", path, {**REMOVE_BODY, "address": 5}, token=token)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
            self.assertMatrixError(await self.request("POST", path, raw_body=b"[1]", token=token),
                                   400, "M_BAD_JSON")

    async def test_account_endpoints_need_a_token(self) -> None:
        for op, body in (("", {"three_pid_creds": ADD_BODY}), ("/add", ADD_BODY),
                         ("/bind", BIND_BODY), ("/unbind", REMOVE_BODY), ("/delete", REMOVE_BODY)):
            resp = await self.request("POST", f"{V3}/account/3pid{op}", body)
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
            resp = await self.request("POST", f"{V3}/account/3pid{op}", body, token="bogus")
            self.assertMatrixError(resp, 401, "M_UNKNOWN_TOKEN")
