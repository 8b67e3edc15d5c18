"""A small blocking Matrix client (stdlib HTTP) for the federation scenarios.

It speaks only the client-server API, the same way to Parley and to Synapse, so a
scenario written once runs against either. Every request has a timeout and every
wait a deadline. Device keys are real: an Ed25519 key per device signs the device
keys and the one-time keys (Parley checks those self-signatures on upload and on
answers from other servers).
"""

from __future__ import annotations

import json
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from signedjson.key import generate_signing_key
from signedjson.sign import sign_json
from unpaddedbase64 import encode_base64

JsonDict = dict[str, Any]
REQUEST_TIMEOUT_S = 20.0
PASSWORD = "correct-horse-battery-staple"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HttpError(AssertionError):
    """A request answered with a non-2xx status (an AssertionError, so a test fails)."""

    def __init__(self, method: str, url: str, code: int, body: Any) -> None:
        super().__init__(f"{method} {url} -> {code}: {body!r}"[:2000])
        self.code = code
        self.body = body


def http_json(method: str, url: str, body: Any = None, token: str | None = None,
              timeout: float = REQUEST_TIMEOUT_S, ca_file: str | None = None) -> Any:
    """One JSON request; raises :class:`HttpError` unless the status is 2xx. ``ca_file``:
    for https URLs, trust only that CA (hostname/IP checked as usual)."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if ca_file:
        handlers.append(urllib.request.HTTPSHandler(
            context=ssl.create_default_context(cafile=ca_file)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw[:500]
        raise HttpError(method, url, e.code, parsed) from None


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 30.0,
             interval_s: float = 0.3) -> Any:
    """Call ``probe`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} "
                                 f"(last: {last!r})"[:2000])
        time.sleep(interval_s)


class MatrixUser:
    """A registered user with one device on one server."""

    def __init__(self, base_url: str, user_id: str, token: str, device_id: str) -> None:
        self.base_url = base_url
        self.user_id = user_id
        self.token = token
        self.device_id = device_id
        self.signing_key: Any = None
        self.since: str | None = None
        self._otk_counter = 0

    # -- plumbing --------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        url = self.base_url + "/_matrix/client/v3" + path
        if query:
            url += "?" + urlencode(query)
        return http_json(method, url, body, self.token)

    # -- registration -----------------------------------------------------------------------

    @classmethod
    def register(cls, base_url: str, localpart: str | None = None) -> MatrixUser:
        """Register through the user-interactive flow with the dummy stage (open
        registration on both servers)."""
        localpart = localpart or "u" + secrets.token_hex(5)
        url = base_url + "/_matrix/client/v3/register"
        body: JsonDict = {"username": localpart, "password": PASSWORD,
                          "initial_device_display_name": "interop"}
        try:
            done = http_json("POST", url, body)
        except HttpError as e:
            if e.code != 401 or not isinstance(e.body, dict):
                raise
            body["auth"] = {"type": "m.login.dummy", "session": e.body.get("session")}
            done = http_json("POST", url, body)
        return cls(base_url, done["user_id"], done["access_token"], done["device_id"])

    def login_new_device(self) -> MatrixUser:
        """A second device of this user (password login)."""
        done = http_json("POST", self.base_url + "/_matrix/client/v3/login", {
            "type": "m.login.password", "password": PASSWORD,
            "identifier": {"type": "m.id.user", "user": self.user_id}})
        return MatrixUser(self.base_url, done["user_id"], done["access_token"],
                          done["device_id"])

    # -- profile ------------------------------------------------------------------------------

    def set_displayname(self, name: str) -> None:
        self.call("PUT", f"/profile/{quote(self.user_id)}/displayname", {"displayname": name})

    def profile(self, user_id: str) -> JsonDict:
        return self.call("GET", f"/profile/{quote(user_id)}")

    # -- end-to-end keys ---------------------------------------------------------------------

    def upload_keys(self, one_time_keys: int = 0) -> JsonDict:
        """Upload signed device keys (first call) and ``one_time_keys`` signed
        curve25519 one-time keys; the server's key counts."""
        body: JsonDict = {}
        if self.signing_key is None:
            self.signing_key = generate_signing_key(self.device_id)
            device_keys = {
                "user_id": self.user_id, "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {f"curve25519:{self.device_id}": encode_base64(secrets.token_bytes(32)),
                         f"ed25519:{self.device_id}":
                             encode_base64(self.signing_key.verify_key.encode())},
            }
            body["device_keys"] = sign_json(device_keys, self.user_id, self.signing_key)
        otks: JsonDict = {}
        for _ in range(one_time_keys):
            self._otk_counter += 1
            key = sign_json({"key": encode_base64(secrets.token_bytes(32))}, self.user_id,
                            self.signing_key)
            otks[f"signed_curve25519:AAAA{self._otk_counter:04d}"] = key
        if otks:
            body["one_time_keys"] = otks
        return self.call("POST", "/keys/upload", body)

    @property
    def ed25519(self) -> str:
        return encode_base64(self.signing_key.verify_key.encode())

    def keys_query(self, user_ids: list[str]) -> JsonDict:
        return self.call("POST", "/keys/query",
                         {"device_keys": {u: [] for u in user_ids}, "timeout": 15000})

    def keys_claim(self, user_id: str, device_id: str) -> JsonDict:
        return self.call("POST", "/keys/claim", {
            "one_time_keys": {user_id: {device_id: "signed_curve25519"}}, "timeout": 15000})

    # -- to-device and sync -------------------------------------------------------------------

    def send_to_device(self, user_id: str, device_id: str, content: JsonDict,
                       event_type: str = "org.parley.interop.ping") -> None:
        self.call("PUT", f"/sendToDevice/{quote(event_type)}/{secrets.token_hex(8)}",
                  {"messages": {user_id: {device_id: content}}})

    def sync_once(self, timeout_ms: int = 1000) -> JsonDict:
        query: JsonDict = {"timeout": timeout_ms}
        if self.since:
            query["since"] = self.since
        out = self.call("GET", "/sync", **query)
        self.since = out["next_batch"]
        return out

    def wait_to_device(self, predicate: Callable[[JsonDict], bool],
                       timeout_s: float = 30.0) -> JsonDict:
        """Sync until a to-device event matching ``predicate`` arrives; return it."""
        found: list[JsonDict] = []

        def probe() -> bool:
            events = self.sync_once().get("to_device", {}).get("events", [])
            found.extend(e for e in events if predicate(e))
            return bool(found)

        wait_for(f"a to-device message for {self.user_id}", probe, timeout_s, 0)
        return found[0]

    # -- rooms ------------------------------------------------------------------------------

    def create_room(self, **body: Any) -> str:
        return self.call("POST", "/createRoom", body)["room_id"]

    def invite(self, room_id: str, user_id: str) -> None:
        self.call("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": user_id})

    def join(self, room_id_or_alias: str, via: list[str] | None = None) -> str:
        query = {"server_name": via[0]} if via else {}
        path = f"/join/{quote(room_id_or_alias)}"
        if query:
            path += "?" + urlencode(query)
        return self.call("POST", path, {})["room_id"]

    def leave(self, room_id: str) -> None:
        self.call("POST", f"/rooms/{quote(room_id)}/leave", {})

    def send_text(self, room_id: str, text: str) -> str:
        return self.call("PUT", f"/rooms/{quote(room_id)}/send/m.room.message/"
                                f"{secrets.token_hex(8)}",
                         {"msgtype": "m.text", "body": text})["event_id"]

    def wait_timeline(self, room_id: str, predicate: Callable[[JsonDict], bool],
                      timeout_s: float = 30.0) -> JsonDict:
        """Sync until an event of ``room_id``'s timeline matches ``predicate``."""
        found: list[JsonDict] = []

        def probe() -> bool:
            rooms = self.sync_once().get("rooms", {})
            for section in ("join", "leave"):
                room = rooms.get(section, {}).get(room_id, {})
                found.extend(e for e in room.get("timeline", {}).get("events", [])
                             if predicate(e))
            return bool(found)

        wait_for(f"an event in {room_id} for {self.user_id}", probe, timeout_s, 0)
        return found[0]

    def wait_invite(self, room_id: str, timeout_s: float = 30.0) -> None:
        def probe() -> bool:
            return room_id in self.sync_once().get("rooms", {}).get("invite", {})

        wait_for(f"an invite to {room_id} for {self.user_id}", probe, timeout_s, 0)

    def joined_members(self, room_id: str) -> set[str]:
        return set(self.call("GET", f"/rooms/{quote(room_id)}/joined_members")["joined"])
