"""The federation area: built only when ``federation.enabled`` is true, so with
federation off no federation route (other than the OpenID userinfo and 3PID onbind
endpoints, which serve non-federating servers too) exists and nothing is sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federation.auth import FederationAuthenticator
from federation.client import FederationClient
from federation.history import register_history
from federation.ingest import build_ingest
from federation.key_servlets import KeyServlets
from federation.keyring import KeyRing
from federation.local_keys import LocalServerKeys
from federation.notary import NotaryHandler
from federation.queries import register_queries
from federation.remote_join import register_membership
from federation.sender.wiring import register_sender
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.crypto.signing_key_file import load_signing_key
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.http.router import Router
from storage.database import Database
from storage.stores.server_keys import ServerKeyStore


@dataclass
class FederationArea:
    local_keys: LocalServerKeys
    keyring: KeyRing
    client: FederationClient
    notary: NotaryHandler
    authenticator: FederationAuthenticator
    sender: Any = None  # federation/sender/wiring.py SenderArea (outbound queue, /send)
    ingest: Any = None  # federation/ingest.py FederationIngest (PDUs into rooms)
    queries: Any = None  # federation/remote_queries.py RemoteQueries (aliases, keys, ...)
    membership: Any = None  # federation/remote_join.py RemoteMembership (joins, invites)


@dataclass
class FederationDeps:
    """The homeserver's areas federation builds on (handlers never import federation/:
    federation reaches into them, not the other way round)."""

    stores: Any = None        # storage.stores.all_stores.Stores
    accounts: Any = None      # homeserver.areas.accounts.AccountsArea
    rooms: Any = None         # homeserver.areas.rooms.RoomsArea
    e2ee: Any = None          # homeserver.areas.e2ee.E2eeArea
    sync: Any = None          # homeserver.areas.sync.SyncArea
    media: Any = None         # homeserver.media.setup area
    notifier: Any = None      # homeserver.notifier.Notifier
    roles: Any = None         # homeserver.replication.roles.RoleWiring (workers)
    plugins: Any = None       # plugins.host.PluginHost (spam checks on remote events)
    metrics_registry: Any = None  # prometheus CollectorRegistry (join phase timings)


class _LazyResolver:
    """twisted.names' resolver, created on first use (it re-reads resolv.conf on a
    timer, which a server that never resolves a SRV name does not need)."""

    def __init__(self) -> None:
        self._inner: Any = None

    def lookupService(self, name: str) -> Any:  # noqa: N802 (twisted.names API)
        if self._inner is None:
            from twisted.names import client as dns_client

            self._inner = dns_client.createResolver()
        return self._inner.lookupService(name)


async def build_federation(config: Config, clock: Clock, db: Database,
                           events: SecurityEventRecorder, router: Router, reactor: Any,
                           srv_resolver: Any = None,
                           deps: FederationDeps | None = None) -> FederationArea | None:
    """``reactor`` is the real one (outbound timeouts must not follow a test clock)."""
    fed = config.federation
    if not fed.enabled:
        return None
    store = ServerKeyStore(db)
    local = LocalServerKeys(config.server_name, load_signing_key(config), store, clock,
                            fed.key_validity_period)
    await local.start()
    client = FederationClient(fed, config.server_name, local.signing_key, reactor, clock,
                              srv_resolver=srv_resolver or _LazyResolver())
    keyring = KeyRing(local, store, clock, client, fed.trusted_key_servers)
    notary = NotaryHandler(local, keyring, store, clock)
    KeyServlets(local, notary).register(router)
    auth = FederationAuthenticator(config.server_name, keyring, fed, events, clock)
    queries = register_queries(config, clock, db, events, router, client, deps)  # + media
    sender = await register_sender(config, clock, events, router, client, deps)  # /send
    ingest = build_ingest(config, clock, events, keyring, deps)  # PDUs into rooms
    if sender is not None and ingest is not None:
        sender.send_servlet.ingest = ingest
    membership = register_membership(config, clock, db, events, router, local, keyring, client,
                                      ingest, deps, sender)  # joins, invites, leaves, knocks
    register_history(config, clock, events, router, client, ingest, deps)  # /backfill...
    return FederationArea(local, keyring, client, notary, auth, sender, ingest,
                          queries=queries, membership=membership)
