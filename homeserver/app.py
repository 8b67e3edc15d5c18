"""The composition root: builds stores, handlers and servlets from the config and
wires them together. Nothing else constructs components; servlets and handlers
receive exactly the dependencies they use."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet import reactor as default_reactor
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall, deferLater
from twisted.web import server

from federation.sender.wiring import forget_room_servers, start_writer_queue
from federation.setup import FederationArea, FederationDeps, build_federation
from homeserver.appservice import build_appservices, check_registrations
from homeserver.areas.accounts import build_accounts
from homeserver.areas.e2ee import build_e2ee
from homeserver.areas.identity import build_identity
from homeserver.areas.rooms import build_rooms
from homeserver.areas.rooms_admin import RoomsAdminArea, build_rooms_admin
from homeserver.areas.sync import build_sync
from homeserver.audit.retention import AuditRetention
from homeserver.clock import Clock
from homeserver.config.model import Config, ListenerConfig
from homeserver.detection.setup import DetectionArea, build_detection, wire_shared_lockouts
from homeserver.gdpr.erasure import Erasure, build_erasure
from homeserver.gdpr.export import ExportJobs, build_gdpr_export, start_cleanup
from homeserver.handlers.consent import ConsentHandler, build_consent
from homeserver.handlers.event_fanout import EventFanout
from homeserver.handlers.legacy import LegacyDeps, LegacyHandler
from homeserver.handlers.partial_state import wait_until_full
from homeserver.handlers.registration import RegistrationHandler
from homeserver.handlers.reporting import ReportingHandler
from homeserver.handlers.retention import RetentionHandler, RetentionJobSource, build_retention
from homeserver.handlers.sessions import SessionHandler
from homeserver.http.router import Router
from homeserver.http.server import MatrixResource, RootResource, listener_site, make_site
from homeserver.media.setup import build_media
from homeserver.metrics.activity import ActivityMetrics
from homeserver.metrics.db import DatabaseMetrics
from homeserver.metrics.http import HttpMetrics
from homeserver.metrics.process import register_process_collectors
from homeserver.metrics.ready import (
    ReadinessCheck,
    StartingResource,
    StartupStatus,
    SwitchableRoot,
)
from homeserver.metrics.registry import MetricsResource, new_registry
from homeserver.notifier import Notifier
from homeserver.push.sender.pool import PusherPool
from homeserver.push.sender.setup import build_pusher_pool
from homeserver.ratelimit import RateLimiter, build_rate_limiter
from homeserver.ratelimit.dispatch import RouteLimits
from homeserver.ratelimit.limiter import InviteRejections
from homeserver.replication import build_replication, make_notifier
from homeserver.replication.forwarding import (
    FORWARD_PREFIX,
    ForwardResource,
    build_forwarder,
    check_replication_listener,
)
from homeserver.replication.remote_create import wire_internal_calls
from homeserver.replication.remote_partial_state import wire_partial_state
from homeserver.replication.remote_persist import wire_federation_calls
from homeserver.replication.roles import OWN_ROUTING, RoleWiring
from homeserver.replication.room_routing import wire_room_routing
from homeserver.replication.routing import ReadOnlyPresence, restrict_to_reads
from homeserver.rest import routes
from homeserver.rest.admin.moderation import register_server_notices
from homeserver.rest.client.websocket import WS_PATH, SyncWebSocketFactory
from homeserver.rest.consent import CONSENT_PATH, ConsentResource
from plugins import load_plugins
from plugins.host import PluginHost
from plugins.wiring import builtin_plugins, wire_plugins
from storage.database import Database
from storage.engines import create_engine
from storage.migrations import migrate
from storage.stores.all_stores import Stores, open_stores
from storage.stores.event_cache import EventCache
from storage.stores.partial_state import PartialStateStore
from storage.stores.state_reads import StateGroupCache

logger = logging.getLogger(__name__)


@dataclass
class Homeserver:
    config: Config
    clock: Clock
    db: Database
    stores: Stores
    router: Router
    site: server.Site
    registration: RegistrationHandler
    sessions: SessionHandler
    fanout: EventFanout
    metrics_registry: CollectorRegistry
    resource: MatrixResource
    notifier: Notifier
    websockets: SyncWebSocketFactory
    readiness: ReadinessCheck
    ports: list[IListeningPort] = field(default_factory=list)
    pushers: PusherPool | None = None
    _loops: list[LoopingCall] = field(default_factory=list)
    _on_stop: list[Any] = field(default_factory=list)
    # Per-action rate limits (set_policy() is the plugin seam); set by build_homeserver.
    rate_limiter: RateLimiter | None = None
    _reactor: Any = default_reactor
    _stopped: bool = False
    # Server notices and the attack detectors (homeserver/detection).
    detection: DetectionArea | None = None
    plugins: PluginHost | None = None  # the plugin host (plugins/host.py)
    gdpr_export: ExportJobs | None = None  # GDPR data exports (homeserver/gdpr/)
    erasure: Erasure | None = None  # GDPR erasure and its purge jobs (homeserver/gdpr/)
    federation: FederationArea | None = None  # federation/setup.py; None when disabled
    # An event persister's partial-state resyncs (replication/remote_partial_state.py).
    writer_partial_state: Any = None
    consent: ConsentHandler | None = None  # consent tracking (None: off)
    retention: RetentionHandler | None = None  # message retention purge jobs
    retention_jobs: RetentionJobSource | None = None  # their runs, as background jobs
    # Rooms admin: room shutdown jobs and the background jobs registry.
    rooms_admin: RoomsAdminArea | None = None
    replication: Any = None  # homeserver/replication/ (None: one process, no workers)
    roles: Any = None  # homeserver/replication/roles.py RoleWiring (worker roles)
    internal_calls: Any = None  # homeserver/replication/remote_create.py (event persisters)

    def listen(self, reactor: Any = default_reactor) -> list[IListeningPort]:
        self._reactor = reactor
        for listener in self.config.listeners:
            # Each listener serves only its ``resources`` (client / federation / metrics).
            self.ports += _listen(reactor, listener, listener_site(self.site, listener.resources))
        return self.ports

    def serve_on(self, early: EarlyListeners) -> None:
        """Take over the listeners :func:`listen_early` opened before this server was
        built: from now on they serve its routes (no port is closed and reopened)."""
        self._reactor = early.reactor
        early.root.switch(self.site.resource)
        self.ports += early.ports

    async def stop(self) -> None:
        """Graceful shutdown (SIGTERM, and every test's tear-down): stop accepting, answer
        /ready 503, wake held long-polls so they answer now, close WebSockets, let
        in-flight requests finish for up to ``shutdown.grace_period_s``, then close
        the database pool."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self._reactor.seconds() + self.config.shutdown_grace_period_s
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for port in self.ports:
            await port.stopListening()
        self.ports = []
        self.readiness.draining = True
        in_flight, sockets = self.resource.in_flight, self.websockets.connection_count()
        if in_flight or sockets:
            logger.info("shutting down: %d requests in flight, %d WebSockets open",
                        in_flight, sockets)
        self.notifier.close()
        self.websockets.close_all()
        await self._drain(deadline)
        if self.detection is not None:  # alerts and notices in flight
            await self.detection.alerts.drain()
        for fn in self._on_stop:
            result = fn()
            if isinstance(result, defer.Deferred):  # e.g. closing the Redis connection
                await result
        self.db.close()

    async def _drain(self, deadline: float) -> None:
        """Wait until no request is in flight and every WebSocket has closed, or the
        deadline (real time, whatever clock the server was built with)."""
        d = self.resource.wait_idle()
        d.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
        try:
            await d
        except defer.TimeoutError:
            logger.warning("shutdown grace period over with %d requests in flight",
                           self.resource.in_flight)
            return
        # Answers written but not yet sent would be lost when the reactor stops.
        while (self.resource.close_connections() or self.websockets.connection_count()) \
                and self._reactor.seconds() < deadline:
            await deferLater(self._reactor, 0.02)


@dataclass
class EarlyListeners:
    """The listeners of a server still starting (see :func:`listen_early`)."""

    reactor: Any
    root: SwitchableRoot
    ports: list[IListeningPort]

    async def stop(self) -> None:
        """Close them (a shutdown before the server was built)."""
        for port in self.ports:
            await port.stopListening()
        self.ports = []


def listen_early(config: Config, reactor: Any, status: StartupStatus) -> EarlyListeners:
    """Open every listener before migrating and building the server: meanwhile
    ``/health`` is 200 and ``/ready`` and everything else 503 saying what is under way
    (:class:`~homeserver.metrics.ready.StartingResource`); :meth:`Homeserver.serve_on`
    then switches them to the real routes. Same listener isolation, body limits and TLS."""
    root = SwitchableRoot(StartingResource(status))
    site = make_site(root, config.max_request_body_size, config.media.max_upload_size)
    ports: list[IListeningPort] = []
    for listener in config.listeners:
        ports += _listen(reactor, listener, listener_site(site, listener.resources))
    return EarlyListeners(reactor, root, ports)


def open_database(config: Config) -> Database:
    engine = create_engine(config.database)
    return Database(engine, config.database.pool_min, config.database.pool_max)


async def build_homeserver(
    config: Config, clock: Clock | None = None, db: Database | None = None,
    run_migrations: bool = True, startup: StartupStatus | None = None,
) -> Homeserver:
    """``startup``, when given, is told the migrations' progress (for ``/ready``)."""
    clock = clock or Clock(default_reactor)
    check_registrations(config)  # application service files: refuse to start on an error
    db = db or open_database(config)
    if run_migrations:
        applied = await migrate(db, clock.time_msec(),
                                startup.migration_progress if startup is not None else None)
        if applied:
            logger.info("applied schema migrations %s", applied)

    stores = open_stores(db)
    stores.events.event_cache = EventCache(config.event_cache_size)
    stores.events.state_cache = StateGroupCache(config.state_cache_entries)
    stores.state_history.state_cache = stores.events.state_cache
    plugins = PluginHost(load_plugins(config.plugins, builtin_plugins(config)),
                         timeouts=config.plugin_timeouts)
    notifier = make_notifier(config, clock)  # replicating with workers
    accounts = build_accounts(config, clock, stores, plugins)
    rooms = await build_rooms(config, clock, stores, notifier, accounts.push_rules)
    e2ee = await build_e2ee(config, clock, stores, notifier, accounts.devices, rooms.fanout)
    sync = await build_sync(config, clock, stores, notifier, accounts, rooms, e2ee)
    if config.federation.enabled:  # rooms joined with partial state: /sync leaves them out
        partial_marks = PartialStateStore(db, stores.events.codec)
        sync.sync.partial_state = partial_marks
        # /members waits (bounded) for the resync; the process that runs it overrides
        # this with its handler (federation/remote_join.py, remote_partial_state.py).
        rooms.pagination.await_full_state = functools.partial(wait_until_full,
                                                                 partial_marks, clock)
    accounts.account.on_deactivated.append(rooms.membership.leave_all_rooms)
    accounts.account.on_erased.append(rooms.client_events.forget_erased)
    accounts.profile.on_member_profile_changed.append(rooms.membership.refresh_profile)
    identity = build_identity(config, db, stores, accounts, rooms, default_reactor)
    appservices = build_appservices(config, clock, db, stores, default_reactor)
    appservices.wire_handlers(accounts, rooms)
    appservices.wire_ephemeral(sync.typing, sync.receipts, sync.presence)
    appservices.wire_e2ee(e2ee.to_device, e2ee.device_lists, e2ee.e2e_keys)
    media, url_previewer = build_media(config, clock, stores.media, plugins,
                                       default_reactor)
    gdpr_export = build_gdpr_export(config, clock, db, stores, media.backend, plugins,
                                    accounts.push_rules)
    rooms_admin = build_rooms_admin(config, clock, db, stores, rooms,
                                    accounts.security_events)
    erasure = build_erasure(config, clock, db, stores, media.backend, plugins,
                            accounts.security_events, rooms.event_creation)
    accounts.account.erasure = erasure.handler
    rooms_admin.jobs.add_source(erasure.jobs)
    router = Router()
    routes.register_all(router, routes.Components(
        config=config, clock=clock, stores=stores, events=accounts.security_events,
        sessions=accounts.sessions, devices=accounts.devices,
        registration=accounts.registration, uia=accounts.uia, account=accounts.account,
        password_auth=accounts.password_auth, profile=accounts.profile,
        account_data=accounts.account_data, filters=accounts.filters, openid=accounts.openid,
        push_rules=accounts.push_rules, event_creation=rooms.event_creation,
        room_creation=rooms.room_creation, room_reads=rooms.room_reads,
        membership=rooms.membership, sync=sync.sync, directory=rooms.directory,
        user_directory=rooms.user_directory, typing=sync.typing, receipts=sync.receipts,
        presence=sync.presence if config.workers.is_main else ReadOnlyPresence(sync.presence),
        pagination=rooms.pagination, redaction=rooms.redaction,
        room_upgrade=rooms.room_upgrade, relations=rooms.relations,
        hierarchy=rooms.hierarchy, search=rooms.search, visibility=rooms.visibility,
        media=media, url_previewer=url_previewer, push_actions=rooms.push_actions,
        notifier=notifier, client_events=rooms.client_events, e2e_keys=e2ee.e2e_keys,
        device_lists=e2ee.device_lists, to_device=e2ee.to_device,
        cross_signing=e2ee.cross_signing, key_backup=e2ee.key_backup,
        auth_limits=accounts.auth_limits, mfa=accounts.mfa,
        identity=identity, gdpr_export=gdpr_export, rooms_admin=rooms_admin,
        appservices=appservices.handler,
        legacy=LegacyHandler(LegacyDeps(
            clock, stores.events, stores.room_members, rooms.event_creation, rooms.visibility,
            rooms.room_reads, rooms.pagination, rooms.client_events, sync.sync,
            accounts.account_data, rooms.directory,
            sync.presence if config.workers.is_main else ReadOnlyPresence(sync.presence))),
        reporting=ReportingHandler(config.server_name, clock, stores.reports, stores.events,
                                   stores.room_members, rooms.visibility, rooms.event_creation,
                                   stores.users),
    ))
    authenticator = appservices.wrap(accounts.authenticator, stores)
    cache = accounts.session_cache
    registry = new_registry()
    register_process_collectors(registry)
    DatabaseMetrics(registry, db)
    activity = ActivityMetrics(registry)
    accounts.security_events.add_sink(activity.security_event)
    rooms.fanout.subscribe("metrics", activity.event_persisted)
    detection = await build_detection(config, clock, db, stores, accounts, rooms, registry)
    # Admin-sent server notices need the notices handler, built just above.
    register_server_notices(router, config, stores, accounts.security_events,
                            detection.notices)
    rate_limiter = build_rate_limiter(config, clock, registry, _is_admin(stores),
                                      accounts.security_events)
    rooms.fanout.subscribe("invite_rejections",
                           InviteRejections(rate_limiter.invite_penalty).event_persisted)
    accounts.uia.password_limiter = _uia_password_limit(rate_limiter)
    readiness = ReadinessCheck(default_reactor, {"database": db.ping,
                                                 **rate_limiter.readiness_checks()})
    readiness.register(router)
    # Plugins: every hook at its call point, metrics, then each plugin's set-up.
    plugins.bind_registry(registry)
    await wire_plugins(plugins, config, stores, accounts, rooms, router, rate_limiter,
                       detection.notices if detection is not None else None)
    appservices.wire_after_plugins(accounts, rate_limiter)
    http_metrics = HttpMetrics(registry)
    resource = MatrixResource(router, authenticator,
                              trusted_proxies=any(li.x_forwarded for li in config.listeners),
                              metrics=http_metrics,
                              rate_limits=RouteLimits(rate_limiter))
    # Event persisters: event-creating requests go to the room's writer (before any
    # worker restriction below turns the routes; homeserver/replication/room_routing.py).
    room_forwarder = wire_room_routing(resource, router, config.workers, default_reactor)
    # Federation (keys, X-Matrix auth, outbound client): only when federation.enabled.
    # A client worker federates with nobody (the main process does).
    # Worker roles (homeserver/replication/roles.py): what this process runs and routes.
    roles = RoleWiring(config, default_reactor)
    federation = None if not roles.builds_federation else await build_federation(
        config, clock, db, accounts.security_events, router, default_reactor,
        deps=FederationDeps(stores=stores, accounts=accounts, rooms=rooms, e2ee=e2ee,
                            sync=sync, media=media, notifier=notifier, roles=roles,
                            plugins=plugins, metrics_registry=registry))
    if federation is not None:
        resource.federation_auth = federation.authenticator
    # A client worker serves reads; writes are forwarded to main when configured, else
    # refused (homeserver/replication/routing.py, forwarding.py).
    forwarder = build_forwarder(config, default_reactor)
    if not config.workers.is_main and config.workers.role not in OWN_ROUTING:
        restrict_to_reads(router, forwarder.handle if forwarder is not None else None)
    roles.restrict_routes(router)  # media, sender and background workers; main's media
    # The WebSocket endpoint needs its own resource (it takes over the connection);
    # the root sends that one path there and every other path to MatrixResource.
    websockets = SyncWebSocketFactory(clock, authenticator, sync.sync, accounts.filters,
                                      session_cache=cache,
                                      trusted_proxies=any(li.x_forwarded for li in config.listeners),
                                      rate_limiter=rate_limiter,
                                      on_rate_limited=http_metrics.rejected)
    root = RootResource(resource)
    # Requests forwarded by the other processes ("replication" listeners only).
    root.mount_prefix(FORWARD_PREFIX + "/",
                      ForwardResource(resource, config.workers.replication_secret))
    # Events made in-process for another writer's room, and writers' side effects that
    # main records (homeserver/replication/remote_create.py).
    side_effects = [sync.presence.after_persist, sync.typing.after_persist,
                    e2ee.device_lists.after_persist]
    internal_calls = wire_internal_calls(config, root, rooms, stores, side_effects,
                                         default_reactor)
    # Federation with event persisters: remote events and memberships go to the room's
    # writer, a writer's invites and remote joins to main (replication/remote_persist.py),
    # and each writer queues its own events' PDUs (federation/sender/wiring.py).
    remote_writes = wire_federation_calls(config, internal_calls, rooms, stores, db,
                                          notifier, clock, federation)
    # Partial-state joins of rooms a persister writes: resynced by that writer.
    writer_partial_state = wire_partial_state(config, remote_writes, internal_calls, rooms,
                                              stores, db, notifier, clock, federation)
    if remote_writes is not None and federation is not None and federation.sender is not None:
        sender = federation.sender.sender  # main: a member event persisted elsewhere
        side_effects.append(lambda ev: forget_room_servers(sender, ev.room_id)
                            if ev.type == "m.room.member" else None)
    writer_queue = await start_writer_queue(config, clock, accounts.security_events, stores,
                                            rooms, roles)
    if room_forwarder is not None:
        room_forwarder.resolve_alias = stores.room_aliases.get_alias
    check_replication_listener(config)
    root.mount(WS_PATH, websockets.make_resource())
    # Only reachable on listeners naming the "metrics" resource (ListenerResource).
    root.mount("/metrics", MetricsResource(registry))
    # Consent tracking (off unless user_consent is configured) and its pages.
    consent = build_consent(config, clock, db, stores, accounts, rooms, detection)
    if consent is not None:
        root.mount(CONSENT_PATH, ConsentResource(
            consent, trusted_proxies=any(li.x_forwarded for li in config.listeners)))
    activity.watch(notifier, accounts.hasher, websockets.connection_count)
    site = make_site(root, config.max_request_body_size, config.media.max_upload_size)
    hs = Homeserver(config, clock, db, stores, router, site, accounts.registration,
                    accounts.sessions, rooms.fanout, registry, resource, notifier, websockets,
                    readiness)
    hs.detection = detection
    hs.rate_limiter = rate_limiter
    hs.plugins = plugins
    hs.federation = federation
    if federation is not None:
        if federation.sender is not None:  # the outbound queue stops before its client
            hs._on_stop.append(lambda: defer.ensureDeferred(federation.sender.stop()))
        if federation.membership is not None and federation.membership.partial_state:
            # Partial-state resyncs (homeserver/handlers/partial_state.py) before the client.
            hs._on_stop.append(lambda: defer.ensureDeferred(
                federation.membership.partial_state.stop()))
        hs._on_stop.append(lambda: defer.ensureDeferred(federation.client.close()))
    hs.writer_partial_state = writer_partial_state
    if writer_partial_state is not None:
        hs._on_stop.append(lambda: defer.ensureDeferred(writer_partial_state.stop()))
    hs._on_stop.append(lambda: defer.ensureDeferred(rate_limiter.close()))
    if forwarder is not None:
        hs._on_stop.append(lambda: defer.ensureDeferred(forwarder.close()))
    if room_forwarder is not None:
        hs._on_stop.append(lambda: defer.ensureDeferred(room_forwarder.close()))
    if writer_queue is not None:
        hs._on_stop.append(lambda: defer.ensureDeferred(writer_queue.stop()))
    if internal_calls is not None:
        hs._on_stop.append(lambda: defer.ensureDeferred(internal_calls.close()))
    hs.internal_calls = internal_calls
    # Login and MFA lockouts shared through Redis when configured (homeserver/detection).
    close_lockouts = wire_shared_lockouts(config, detection, accounts.mfa, rate_limiter,
                                          default_reactor)
    if close_lockouts is not None:
        hs._on_stop.append(lambda: defer.ensureDeferred(close_lockouts()))

    cleanup = LoopingCall(lambda: _background(accounts.uia.expire_old_sessions()))
    cleanup.clock = clock._time  # noqa: SLF001 (the clock's own IReactorTime)
    cleanup.start(600, now=False)
    hs._loops.append(cleanup)
    hs._on_stop.append(accounts.hasher.stop)
    # The audit trail: its head for the metric, and the daily retention purge.
    await accounts.security_events.load_head()
    activity.watch_audit_head(accounts.security_events.chain_head)
    audit_retention = AuditRetention(accounts.security_events, clock,
                                     config.audit.retention_days)
    if roles.runs("background"):  # background jobs: main, or the background worker
        audit_retention.start()
    hs._on_stop.append(audit_retention.stop)
    if config.workers.is_main:
        sync.presence.start()
    hs._on_stop.append(sync.presence.stop)
    # Push delivery to HTTP pushers' gateways (homeserver/push/sender/).
    if roles.runs("pusher"):  # main, or a pusher worker (its shard of the users)
        pushers = await build_pusher_pool(config, clock, roles.pusher_stores(stores),
                                          default_reactor,
                                          rooms.event_creation, rooms.push_actions,
                                          sync.receipts, registry)
        hs.pushers = pushers
        hs._on_stop.append(pushers.stop)
    roles.wire_pushers(hs.pushers, rooms.push_actions, sync.receipts)
    # GDPR exports: resume the jobs a stopped process left, delete expired archives.
    hs.gdpr_export = gdpr_export
    hs._on_stop.append(lambda: defer.ensureDeferred(gdpr_export.stop()))
    roles.wire_background(erasure, gdpr_export)  # before either starts a job
    if roles.runs("background"):
        hs._loops.append(start_cleanup(gdpr_export, clock))
        await gdpr_export.resume_pending()
    # GDPR erasure: purge jobs past their grace window, now and hourly.
    hs.erasure = erasure
    if roles.runs("background"):
        erasure.purge.start()
    hs._on_stop.append(erasure.purge.stop)
    # Message retention: m.room.retention checked on send; purge jobs when enabled.
    hs.consent = consent
    retention, hs.retention_jobs = build_retention(config, clock, db, stores, rooms)
    hs.retention = retention
    rooms_admin.jobs.add_source(hs.retention_jobs)  # its runs: background jobs
    if config.retention.enabled and roles.runs("background"):
        retention.start()
        hs._on_stop.append(lambda: defer.ensureDeferred(retention.stop()))
        await retention.resume_pending()
    # Room shutdowns: resume the jobs a stopped process left.
    hs.rooms_admin = rooms_admin
    hs._on_stop.append(lambda: defer.ensureDeferred(rooms_admin.shutdown.stop()))
    if config.workers.is_main:
        await rooms_admin.shutdown.resume_pending()
    # Application services: sender users, then resume their queued transactions (sent
    # by the appservice workers when there are some).
    if await roles.start_appservices(appservices):
        hs._on_stop.append(lambda: defer.ensureDeferred(appservices.stop()))
    # Replication with the other processes when workers are configured (homeserver/replication).
    hs.replication = await build_replication(config, clock, db, notifier, accounts, rooms,
                                             sync, default_reactor, registry)
    if hs.replication is not None:
        hs._on_stop.append(lambda: defer.ensureDeferred(hs.replication.stop()))
    roles.attach(hs.replication)
    hs.roles = roles
    hs._on_stop.insert(0, lambda: defer.ensureDeferred(roles.stop()))
    return hs


def _is_admin(stores: Stores) -> Any:
    """``user_id -> is admin`` for the rate limiter's admin exemption."""
    async def lookup(user_id: str) -> bool:
        user = await stores.users.get_user(user_id)
        return bool(user is not None and user.is_admin)
    return lookup


def _uia_password_limit(limiter: RateLimiter) -> Any:
    """The UIA password stage's limit: class ``uia_password`` of the shared limiter, per
    user being authenticated, admins included (it guards against password guessing)."""
    async def check(user_id: str) -> None:
        await limiter.check("uia_password", user_id, user_id=user_id, key_kind="user",
                            exemptible=False)
    return check


def _background(coro: Any) -> None:
    from twisted.internet import defer

    d = defer.ensureDeferred(coro)
    d.addErrback(lambda f: logger.error("background task failed: %s", f.getErrorMessage()))


# The kernel's queue of connections not yet accepted (Twisted's default is 50): a burst of
# clients (a reconnect storm, a login flood) waits there instead of being dropped while
# the reactor is busy. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def _listen(reactor: Any, listener: ListenerConfig, site: server.Site) -> list[IListeningPort]:
    ports = []
    for address in listener.bind_addresses:
        if listener.tls_certificate_path and listener.tls_private_key_path:
            ports.append(reactor.listenSSL(listener.port, site, _tls_context(listener),
                                           backlog=LISTEN_BACKLOG, interface=address))
        else:
            ports.append(reactor.listenTCP(listener.port, site, backlog=LISTEN_BACKLOG,
                                           interface=address))
        logger.info("listening on %s:%d%s", address, listener.port,
                    " (TLS)" if listener.tls_certificate_path else "")
    return ports


def _tls_context(listener: ListenerConfig) -> Any:
    """TLS 1.2 minimum (1.3 when configured); certificates read once at start-up."""
    with open(listener.tls_certificate_path or "", "rb") as f:
        cert_pem = f.read()
    with open(listener.tls_private_key_path or "", "rb") as f:
        key_pem = f.read()
    cert = tssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    lowest = (tssl.TLSVersion.TLSv1_3 if listener.tls_min_version == "1.3"
              else tssl.TLSVersion.TLSv1_2)
    return tssl.CertificateOptions(
        privateKey=cert.privateKey.original,
        certificate=cert.original,
        raiseMinimumTo=lowest,
    )
