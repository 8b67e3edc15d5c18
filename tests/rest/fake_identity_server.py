"""A small in-process identity server (the IS v2 endpoints SyTest's mock implements) on
a loopback port, with real ed25519 keys, and a test mixin that runs Parley trusting it.

Like SyTest's ``lib/SyTest/Identity/Server.pm``: v2 endpoints need the access token
(``ACCESS_TOKEN``) in the Authorization header, the query or the JSON body; lookups
support the ``none`` and ``sha256`` algorithms; ``store-invite`` answers with a token,
the display name ``Bob`` and two public keys; ``bind_identity`` binds a 3PID and, like
the real thing, calls the homeserver's ``onbind`` with the pending invites, signed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qs

import treq
from twisted.internet import reactor
from twisted.web import resource, server
from twisted.web.client import HTTPConnectionPool

from homeserver.events.hashing import encode_base64
from homeserver.events.signing import generate_signing_key, sign_json
from tests.rest.room_helpers import RoomTestCase

ACCESS_TOKEN = "swordfish"
PEPPER = "matrixrocks"
V2 = "/_matrix/identity/v2"


class FakeIdentityServer(resource.Resource):
    isLeaf = True  # noqa: N815 (twisted.web API)

    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # host:port, set by start()
        self.bindings: dict[tuple[str, str], str] = {}
        self.invites: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.validated: dict[str, tuple[str, str]] = {}
        self.requests: list[tuple[str, str, dict[str, Any], Any]] = []
        self.next_token = 0
        self.port: Any = None
        self.rotate_keys()

    # ---- lifecycle

    def start(self) -> None:
        self.port = reactor.listenTCP(0, server.Site(self), interface="127.0.0.1")
        self.name = f"127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
            self.port = None

    def rotate_keys(self) -> None:
        self.key = generate_signing_key("0")
        self.ephemeral = generate_signing_key("0")
        self.keys = {"ed25519:0": encode_base64(self.key.verify_key.encode()),
                     "ed25519:ephemeral": encode_base64(self.ephemeral.verify_key.encode())}

    def sign(self, obj: dict[str, Any], ephemeral: bool = False) -> dict[str, Any]:
        return sign_json(obj, self.name, self.ephemeral if ephemeral else self.key)

    def validate_identity(self, medium: str, address: str) -> str:
        sid = f"session_{len(self.validated)}"
        self.validated[sid] = (medium, address)
        return sid

    def lookup_identity(self, medium: str, address: str) -> str | None:
        return self.bindings.get((medium, address))

    async def bind_identity(self, medium: str, address: str, mxid: str,
                            hs_base_url: str | None = None) -> Any:
        """Bind, then (if given a homeserver) POST its onbind with the pending invites."""
        self.bindings[(medium, address)] = mxid
        if hs_base_url is None:
            return None
        invites = []
        for invite in self.invites.get((medium, address), []):
            signed = self.sign({"mxid": mxid, "token": invite["token"]})
            invites.append({**invite, "mxid": mxid, "signed": signed})
        body = self.sign({"address": address, "medium": medium, "mxid": mxid,
                          "invites": invites})
        resp = await treq.post(f"{hs_base_url}/_matrix/federation/v1/3pid/onbind",
                               json.dumps(body).encode(),
                               headers={"Content-Type": ["application/json"]},
                               pool=HTTPConnectionPool(reactor, persistent=False))
        await resp.content()
        return resp.code

    # ---- HTTP

    def render(self, request: Any) -> bytes:
        path = request.path.decode()
        query = {k: v[0] for k, v in parse_qs(request.uri.decode().partition("?")[2]).items()}
        raw = request.content.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        auth = (request.getHeader("authorization") or "")
        self.requests.append((request.method.decode(), path, query, body))
        request.setHeader("content-type", "application/json")
        code, answer = self.route(request.method.decode(), path, query, body, auth)
        request.setResponseCode(code)
        return json.dumps(answer).encode()

    def route(self, method: str, path: str, query: dict[str, str], body: Any,
              auth: str) -> tuple[int, Any]:
        if path == f"{V2}/pubkey/isvalid":
            return 200, {"valid": query.get("public_key") in self.keys.values()}
        if path == f"{V2}/3pid/unbind":
            key = (body["threepid"]["medium"], body["threepid"]["address"])
            if self.bindings.get(key) != body.get("mxid"):
                return 404, {"errcode": "M_NOT_FOUND", "error": "not bound"}
            del self.bindings[key]
            return 200, {}
        has_token = ACCESS_TOKEN in (query.get("id_access_token"), body.get("id_access_token")) \
            or auth == f"Bearer {ACCESS_TOKEN}"
        if not has_token:
            return 401, {"errcode": "M_UNAUTHORIZED", "error": "no token"}
        if path == f"{V2}/hash_details":
            return 200, {"lookup_pepper": PEPPER, "algorithms": ["none", "sha256"]}
        if path == f"{V2}/lookup":
            return self.on_lookup(body)
        if path == f"{V2}/store-invite":
            return self.on_store_invite(body)
        if path == f"{V2}/3pid/bind":
            medium, address = self.validated[body["sid"]]
            self.bindings[(medium, address)] = body["mxid"]
            return 200, self.sign({"medium": medium, "address": address, "mxid": body["mxid"],
                                   "not_before": 0, "not_after": 4582425849161, "ts": 0})
        return 404, {"errcode": "M_UNRECOGNIZED", "error": path}

    def on_lookup(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("algorithm") == "none":
            out = {}
            for entry in body["addresses"]:
                address, medium = entry.split(" ")
                out[entry] = self.bindings.get((medium, address))
            return 200, {"mappings": {k: v for k, v in out.items() if v}}
        if body.get("algorithm") == "sha256" and body.get("pepper") == PEPPER:
            hashes = {}
            for (medium, address), mxid in self.bindings.items():
                digest = hashlib.sha256(f"{address} {medium} {PEPPER}".encode()).digest()
                hashes[encode_base64(digest, urlsafe=True)] = mxid
            return 200, {"mappings": {h: hashes[h] for h in body["addresses"] if h in hashes}}
        return 400, {"errcode": "M_INVALID_PEPPER", "error": "bad pepper"}

    def on_store_invite(self, body: dict[str, Any]) -> tuple[int, Any]:
        token = str(self.next_token)
        self.next_token += 1
        key = (body["medium"], body["address"])
        self.invites.setdefault(key, []).append({
            "address": body["address"], "medium": body["medium"], "room_id": body["room_id"],
            "sender": body["sender"], "token": token})
        url = f"https://{self.name}{V2}/pubkey/isvalid"
        return 200, {"token": token, "display_name": "Bob", "public_key": self.keys["ed25519:0"],
                     "public_keys": [
                         {"public_key": self.keys["ed25519:0"], "key_validity_url": url},
                         {"public_key": self.keys["ed25519:ephemeral"], "key_validity_url": url}]}


class IdentityTestCase(RoomTestCase):
    """A Parley trusting one running :class:`FakeIdentityServer` (``self.ids``)."""

    trust_identity_server = True

    async def setUp(self) -> None:  # type: ignore[override]
        self.ids = FakeIdentityServer()
        self.ids.start()
        self.addCleanup(self.ids.stop)
        await super().setUp()

    def config_overrides(self) -> dict[str, Any]:
        trusted = [self.ids.name] if self.trust_identity_server else []
        return {"identity_servers": {"trusted": trusted, "plain_http": True}}
