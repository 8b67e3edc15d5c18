"""Identity servers: 3PID invites (``/invite`` with ``id_server``, ``createRoom``'s
``invite_3pid``), the identity server's ``onbind`` callback, and 3PID bind/unbind.

``id_server`` comes from the client, so every outbound request is an SSRF risk. Only
identity servers listed in ``identity_servers.trusted`` (``host[:port]``; a bare host
allows any port) are ever contacted; anything else is 400 ``M_SERVER_NOT_TRUSTED``, as
Synapse answers for an untrusted identity server. The connection goes through the URL
previews' blocklisting resolver, so a trusted name resolving to a private, loopback or
otherwise non-public address is refused unless the trusted entry is that IP literal or
the address is in ``identity_servers.ip_range_allowlist``. Every request has a timeout
and its answer a size cap.

Parley keeps no email / phone association of its own: bind and unbind are a proxy to
the identity server, and ``threepid_binds`` only remembers where a user bound what, so
that unbinding (and deactivation) knows where to go.

The ``onbind`` callback is not authenticated (anyone can call it): an invite it carries
is only turned into an ``m.room.member`` invite if its ``signed`` block verifies against
the public keys of the room's ``m.room.third_party_invite`` event (which came from the
trusted identity server's ``store-invite`` answer) and the identity server still says
that key is valid; the event authorization rules check the signature again.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import treq
from signedjson.types import SigningKey
from twisted.internet import ssl as tssl
from twisted.internet._sslverify import ClientTLSOptions
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from homeserver.config.model import IdentityServersConfig
from homeserver.events.auth import (
    THIRD_PARTY_INVITE,
    signed_by_any_key,
    third_party_invite_public_keys,
)
from homeserver.events.hashing import decode_base64, encode_base64
from homeserver.events.power_levels import domain_of, is_valid_user_id
from homeserver.events.signing import key_id, sign_json
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.membership import MembershipHandler
from homeserver.http.bounded_body import read_bounded
from homeserver.http.errors import Codes, MatrixError
from homeserver.media.preview import BlocklistingResolver, _ReactorProxy
from storage.stores.room_members import RoomMemberStore
from storage.stores.threepid_binds import ThreepidBindStore

logger = logging.getLogger(__name__)

_HOST_PORT = re.compile(r"^([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?\Z")
MAX_INVITES_PER_BIND = 100
MAX_TOKEN_LENGTH = 255
_IS_PATH = re.compile(r"^/_matrix/identity/[A-Za-z0-9/_.\-]{1,200}\Z")


class IdentityServerError(Exception):
    """The identity server could not be reached or gave an unusable answer."""


def split_host_port(server: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (lower-cased host) or None if ``server`` is not of that form."""
    m = _HOST_PORT.match(server)
    if m is None:
        return None
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port < 65536:
        return None
    return m.group(1).lower(), port


@implementer(IPolicyForHTTPS)
class _NoVerifyPolicy:
    """TLS without certificate checks (``tls_verify: false``: tests with self-signed
    identity servers only)."""

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:  # noqa: N802
        ctx = tssl.CertificateOptions(verify=False).getContext()
        return ClientTLSOptions(hostname.decode("ascii"), ctx)


class IdentityServerClient:
    """JSON over HTTP(S) to trusted identity servers only, with timeouts and size caps."""

    def __init__(self, config: IdentityServersConfig, reactor: Any) -> None:
        self._config = config
        self._trusted = [t for t in (split_host_port(e) for e in config.trusted) if t]
        # Trusted IP literals are explicitly listed: the blocklist does not apply to them.
        literals = []
        for host, _ in self._trusted:
            try:
                literals.append(str(ipaddress.ip_address(host.strip("[]"))))
            except ValueError:
                continue
        allowlist = list(config.ip_range_allowlist) + literals
        proxy = _ReactorProxy(reactor, BlocklistingResolver(reactor.nameResolver, allowlist))
        policy = BrowserLikePolicyForHTTPS() if config.tls_verify else _NoVerifyPolicy()
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        # No redirects: a trusted server must not bounce us elsewhere.
        self._agent = Agent(proxy, contextFactory=policy, pool=self._pool, connectTimeout=5)
        self._reactor = reactor

    @property
    def enabled(self) -> bool:
        return bool(self._trusted)

    def is_trusted(self, id_server: str) -> bool:
        parsed = split_host_port(id_server)
        if parsed is None:
            return False
        host, port = parsed
        return any(h == host and (p is None or p == port) for h, p in self._trusted)

    def check_trusted(self, id_server: str) -> str:
        """The normalised ``host[:port]``; 400 ``M_SERVER_NOT_TRUSTED`` otherwise."""
        if not self.is_trusted(id_server):
            raise MatrixError(400, "Untrusted ID server", Codes.SERVER_NOT_TRUSTED)
        host, port = split_host_port(id_server) or ("", None)
        return host if port is None else f"{host}:{port}"

    def url(self, id_server: str, path: str, query: Mapping[str, str] | None = None) -> str:
        scheme = "http" if self._config.plain_http else "https"
        q = f"?{urlencode(dict(query))}" if query else ""
        return f"{scheme}://{id_server}{path}{q}"

    async def request(self, method: str, id_server: str, path: str, *,
                      query: Mapping[str, str] | None = None, body: Any = None,
                      access_token: str | None = None,
                      authorization: str | None = None) -> tuple[int, Any]:
        """(status, decoded JSON or None); :class:`IdentityServerError` on transport
        failures, timeouts and oversized answers."""
        id_server = self.check_trusted(id_server)
        headers: dict[str, list[str]] = {"User-Agent": ["Parley"]}
        if access_token is not None:
            headers["Authorization"] = [f"Bearer {access_token}"]
        elif authorization is not None:
            headers["Authorization"] = [authorization]
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = ["application/json"]
        try:
            resp = await treq.request(method, self.url(id_server, path, query), data=data,
                                      headers=headers, agent=self._agent,
                                      timeout=self._config.timeout)
            raw = await self._read(resp)
        except IdentityServerError:
            raise
        except Exception as e:  # noqa: BLE001 (DNS, blocked address, refused, timeout)
            raise IdentityServerError(f"{id_server} unreachable: {type(e).__name__}") from e
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = None
        return resp.code, decoded

    async def _read(self, resp: Any) -> bytes:
        return await read_bounded(
            resp, self._config.max_response_size,
            lambda: IdentityServerError("identity server answer too large"),
            self._reactor, self._config.timeout)


def _unavailable(e: Exception) -> MatrixError:
    logger.info("identity server request failed: %s", e)
    return MatrixError(502, "The identity server could not be reached", Codes.UNKNOWN)


class IdentityHandler:
    def __init__(self, server_name: str, client: IdentityServerClient,
                 binds: ThreepidBindStore, membership: MembershipHandler,
                 creation: EventCreationHandler, members: RoomMemberStore,
                 signing_key: SigningKey) -> None:
        self._server_name = server_name
        self.client = client
        self._binds = binds
        self._membership = membership
        self._creation = creation
        self._members = members
        self._signing_key = signing_key

    # ---- bind / unbind (POST /account/3pid/bind, /unbind, /delete; deactivation)

    async def bind(self, user_id: str, id_server: str, id_access_token: str, sid: str,
                   client_secret: str) -> None:
        """Ask the identity server to bind the validated 3PID session to ``user_id``
        and remember where it was bound."""
        server = self.client.check_trusted(id_server)
        body = {"sid": sid, "client_secret": client_secret, "mxid": user_id,
                "id_access_token": id_access_token}
        try:
            code, answer = await self.client.request(
                "POST", server, "/_matrix/identity/v2/3pid/bind", body=body,
                access_token=id_access_token)
        except IdentityServerError as e:
            raise _unavailable(e) from e
        if code != 200 or not isinstance(answer, dict):
            raise MatrixError(400, "The identity server refused the bind",
                              Codes.THREEPID_AUTH_FAILED)
        medium, address = answer.get("medium"), answer.get("address")
        if answer.get("mxid") != user_id or not isinstance(medium, str) or \
                not isinstance(address, str) or len(medium) > 64 or len(address) > 512:
            raise MatrixError(502, "Unexpected answer from the identity server", Codes.UNKNOWN)
        await self._binds.add_bind(user_id, medium, address, server)

    async def unbind(self, user_id: str, medium: str, address: str,
                     id_server: str | None) -> str:
        """``id_server_unbind_result``: ``success`` if every identity server involved
        unbound, ``no-support`` otherwise (or if none is known or trusted)."""
        if id_server is not None:
            servers = [id_server] if self.client.is_trusted(id_server) else []
        else:
            servers = await self._binds.servers_for(user_id, medium, address)
        if not servers:
            return "no-support"
        ok = True
        for server in servers:
            ok = await self._unbind_one(user_id, medium, address, server) and ok
        return "success" if ok else "no-support"

    async def _unbind_one(self, user_id: str, medium: str, address: str, server: str) -> bool:
        if not self.client.is_trusted(server):  # no longer trusted: forget, contact nothing
            await self._binds.remove_bind(user_id, medium, address, server)
            return False
        server = self.client.check_trusted(server)
        path = "/_matrix/identity/v2/3pid/unbind"
        body = {"mxid": user_id, "threepid": {"medium": medium, "address": address}}
        try:
            code, _ = await self.client.request(
                "POST", server, path, body=body,
                authorization=self._x_matrix("POST", path, server, body))
        except IdentityServerError as e:
            raise _unavailable(e) from e
        if code == 200:
            await self._binds.remove_bind(user_id, medium, address, server)
            return True
        if code in (400, 404, 501):  # as Synapse: not bound there, or not supported
            await self._binds.remove_bind(user_id, medium, address, server)
            return False
        raise MatrixError(502, "The identity server could not unbind", Codes.UNKNOWN)

    async def unbind_all(self, user_id: str) -> None:
        """Deactivation hook: unbind every 3PID bound through us. A failing identity
        server does not stop the deactivation (its row stays for a later attempt)."""
        for medium, address, server in await self._binds.binds_of_user(user_id):
            try:
                await self._unbind_one(user_id, medium, address, server)
            except MatrixError as e:
                logger.warning("deactivation: unbind from %s failed: %s", server, e.msg)

    def _x_matrix(self, method: str, uri: str, destination: str, content: Any) -> str:
        """Sign the request as this homeserver (identity service API ``/3pid/unbind``)."""
        signed = sign_json({"method": method, "uri": uri, "origin": self._server_name,
                            "destination": destination, "content": content},
                           self._server_name, self._signing_key)
        sig = signed["signatures"][self._server_name][key_id(self._signing_key)]
        return (f'X-Matrix origin="{self._server_name}",destination="{destination}",'
                f'key="{key_id(self._signing_key)}",sig="{sig}"')

    # ---- 3PID invites

    async def invite(self, sender: str, room_id: str, id_server: str, id_access_token: str,
                     medium: str, address: str) -> None:
        """Invite whoever owns ``medium``/``address``: a plain invite if the identity
        server knows their Matrix ID, else an ``m.room.third_party_invite`` event the
        identity server's later ``onbind`` call turns into a real invite."""
        server = self.client.check_trusted(id_server)
        await self._creation.room_version(room_id)  # 404 for unknown rooms
        # Nothing is sent to the identity server on behalf of someone not in the room.
        record = await self._members.get_membership(sender, room_id)
        if record is None or record.membership != "join":
            raise MatrixError(403, "You are not in this room", Codes.FORBIDDEN)
        banned = self._creation.shadow_banned  # homeserver/handlers/shadow_ban.py
        if banned is not None and await banned(sender):
            return  # as Synapse: success, but no identity server is asked to invite anyone
        try:
            mxid = await self._lookup(server, id_access_token, medium, address)
            if mxid is not None:
                await self._membership.update(sender, room_id, mxid, "invite")
                return
            content = await self._store_invite(server, id_access_token, medium, address,
                                               room_id, sender)
        except IdentityServerError as e:
            raise _unavailable(e) from e
        state_key = content.pop("_token")
        await self._creation.send(room_id, sender, THIRD_PARTY_INVITE, content, state_key)

    async def _lookup(self, server: str, token: str, medium: str, address: str) -> str | None:
        """The Matrix ID bound to the 3PID (v2 hashed lookup), or None."""
        code, details = await self.client.request(
            "GET", server, "/_matrix/identity/v2/hash_details",
            query={"id_access_token": token}, access_token=token)
        if code != 200 or not isinstance(details, dict):
            raise MatrixError(400, "The identity server refused the lookup",
                              Codes.UNKNOWN)
        algorithms = details.get("algorithms")
        algorithms = algorithms if isinstance(algorithms, list) else []
        pepper = details.get("lookup_pepper")
        if "sha256" in algorithms and isinstance(pepper, str):
            digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
            key = encode_base64(digest, urlsafe=True)
            algorithm = "sha256"
        elif "none" in algorithms:
            key, algorithm = f"{address} {medium}", "none"
        else:
            raise MatrixError(400, "The identity server offers no usable lookup",
                              Codes.UNKNOWN)
        code, answer = await self.client.request(
            "POST", server, "/_matrix/identity/v2/lookup",
            body={"addresses": [key], "algorithm": algorithm, "pepper": pepper or "",
                  "id_access_token": token}, access_token=token)
        mappings = answer.get("mappings") if code == 200 and isinstance(answer, dict) else None
        if not isinstance(mappings, dict):
            raise MatrixError(400, "The identity server refused the lookup", Codes.UNKNOWN)
        mxid = mappings.get(key)
        return mxid if is_valid_user_id(mxid) else None

    async def _store_invite(self, server: str, token: str, medium: str, address: str,
                            room_id: str, sender: str) -> dict[str, Any]:
        """The ``m.room.third_party_invite`` content from the identity server's
        ``store-invite`` answer (plus ``_token``, the state key). Only what the spec
        requires is sent: no room name, avatar or inviter profile."""
        body = {"medium": medium, "address": address, "room_id": room_id, "sender": sender,
                "id_access_token": token}
        code, answer = await self.client.request(
            "POST", server, "/_matrix/identity/v2/store-invite", body=body, access_token=token)
        if code != 200 or not isinstance(answer, dict):
            raise MatrixError(400, "The identity server refused the invite", Codes.UNKNOWN)
        invite_token = answer.get("token")
        if not isinstance(invite_token, str) or not 0 < len(invite_token) <= MAX_TOKEN_LENGTH:
            raise MatrixError(502, "Unexpected answer from the identity server", Codes.UNKNOWN)
        keys: list[dict[str, str]] = []
        entries = answer.get("public_keys")
        for entry in entries[:10] if isinstance(entries, list) else []:
            if isinstance(entry, dict) and _is_ed25519_key(entry.get("public_key")):
                url = entry.get("key_validity_url")
                item = {"public_key": entry["public_key"]}
                if isinstance(url, str) and len(url) <= 2048:
                    item["key_validity_url"] = url
                keys.append(item)
        if _is_ed25519_key(answer.get("public_key")) and \
                not any(k["public_key"] == answer["public_key"] for k in keys):
            keys.insert(0, {"public_key": answer["public_key"],
                            "key_validity_url": self.client.url(
                                server, "/_matrix/identity/v2/pubkey/isvalid")})
        if not keys:
            raise MatrixError(502, "The identity server gave no usable key", Codes.UNKNOWN)
        display_name = answer.get("display_name")
        content: dict[str, Any] = {
            "display_name": display_name[:256] if isinstance(display_name, str) else "",
            "public_key": keys[0]["public_key"],
            "public_keys": keys,
            "_token": invite_token,
        }
        if "key_validity_url" in keys[0]:
            content["key_validity_url"] = keys[0]["key_validity_url"]
        return content

    # ---- PUT /_matrix/federation/v1/3pid/onbind (called by the identity server)

    async def on_bind(self, body: Mapping[str, Any]) -> None:
        """Turn each verified pending invite into an ``m.room.member`` invite. Invites
        that do not verify, or name rooms we do not have, are skipped (and logged)."""
        mxid = body.get("mxid")
        invites = body.get("invites")
        if not is_valid_user_id(mxid) or not isinstance(invites, list):
            return
        for invite in invites[:MAX_INVITES_PER_BIND]:
            try:
                await self._exchange(mxid, invite)
            except (MatrixError, IdentityServerError) as e:
                logger.info("3pid onbind: invite not exchanged: %s", e)

    async def _exchange(self, mxid: str, invite: Any) -> None:
        if not isinstance(invite, Mapping):
            return
        room_id, signed = invite.get("room_id"), invite.get("signed")
        if not isinstance(room_id, str) or not isinstance(signed, Mapping):
            return
        token = signed.get("token")
        if signed.get("mxid") != mxid or invite.get("mxid", mxid) != mxid or \
                not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return
        await self._creation.room_version(room_id)
        state = await self._creation.current_state(room_id, [(THIRD_PARTY_INVITE, token)])
        tpi = state.get((THIRD_PARTY_INVITE, token))
        if tpi is None or domain_of(tpi.sender) != self._server_name:
            return
        key = signed_by_any_key(signed, third_party_invite_public_keys(tpi.content))
        if key is None:
            logger.info("3pid onbind: bad signature for a pending invite in %s", room_id)
            return
        if not await self._key_still_valid(tpi.content, key):
            logger.info("3pid onbind: key no longer valid for a pending invite in %s", room_id)
            return
        display_name = tpi.content.get("display_name")
        await self._membership.update(
            tpi.sender, room_id, mxid, "invite",
            extra={"third_party_invite": {
                "display_name": display_name if isinstance(display_name, str) else "",
                "signed": dict(signed)}})

    async def _key_still_valid(self, content: Mapping[str, Any], key: str) -> bool:
        """Ask the (trusted) identity server named by the key's validity URL whether the
        key has been revoked since the invite."""
        url = None
        entries = content.get("public_keys")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping) and entry.get("public_key") == key:
                url = entry.get("key_validity_url")
                break
        if url is None and content.get("public_key") == key:
            url = content.get("key_validity_url")
        if not isinstance(url, str):
            return False
        parts = urlsplit(url)
        if not parts.netloc or not _IS_PATH.match(parts.path) or \
                not self.client.is_trusted(parts.netloc):
            return False
        code, answer = await self.client.request(
            "GET", parts.netloc, parts.path, query={"public_key": key})
        return code == 200 and isinstance(answer, dict) and answer.get("valid") is True


def _is_ed25519_key(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        return len(decode_base64(value)) == 32
    except ValueError:
        return False
