"""The composition root: builds stores, handlers and servlets from the config and
wires them together. Nothing else constructs components; servlets and handlers
receive exactly the dependencies they use."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet import reactor as default_reactor
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.web import server

from homeserver.auth.access_tokens import AccessTokenCodec
from homeserver.auth.authenticator import TokenAuthenticator
from homeserver.auth.password_auth import PasswordAuth
from homeserver.auth.password_policy import PasswordPolicy
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.session_cache import SessionCache
from homeserver.auth.ui_auth import UserInteractiveAuth
from homeserver.clock import Clock
from homeserver.config.model import Config, ListenerConfig
from homeserver.events.signing import load_or_generate_signing_key
from homeserver.handlers.account import AccountHandler
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.cross_signing import CrossSigningHandler
from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.directory import DirectoryHandler, RoomStatsUpdater
from homeserver.handlers.e2e_keys import E2eKeysHandler
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.filters import FilterHandler
from homeserver.handlers.hierarchy import HierarchyHandler
from homeserver.handlers.key_backup import KeyBackupHandler
from homeserver.handlers.legacy import LegacyDeps, LegacyHandler
from homeserver.handlers.membership import MembershipHandler
from homeserver.handlers.openid import OpenIdHandler
from homeserver.handlers.pagination import PaginationHandler
from homeserver.handlers.presence import PresenceHandler
from homeserver.handlers.profile import ProfileHandler
from homeserver.handlers.push_actions import PushActionsHandler
from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.handlers.receipts import ReceiptsHandler
from homeserver.handlers.redaction import RedactionHandler
from homeserver.handlers.registration import RegistrationHandler
from homeserver.handlers.relations import RelationsHandler, RelationsIndexer
from homeserver.handlers.reporting import ReportingHandler
from homeserver.handlers.room_creation import RoomCreationHandler
from homeserver.handlers.room_reads import RoomReadHandler
from homeserver.handlers.room_upgrade import RoomUpgradeHandler
from homeserver.handlers.search import SearchHandler, SearchIndexer
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.sessions import SessionHandler
from homeserver.handlers.sync import SyncHandler
from homeserver.handlers.to_device import ToDeviceHandler
from homeserver.handlers.typing import TypingHandler
from homeserver.handlers.user_directory import UserDirectoryHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.router import Router
from homeserver.http.server import MatrixResource, RootResource, listener_site, make_site
from homeserver.media.setup import build_media
from homeserver.notifier import Notifier
from homeserver.rest import routes
from homeserver.rest.client.websocket import WS_PATH, SyncWebSocketFactory
from plugins import load_plugins
from plugins.e2ee_only import E2eeOnlyPolicy
from storage.database import Database
from storage.engines import create_engine
from storage.migrations import migrate
from storage.stores.account_data import AccountDataStore
from storage.stores.cross_signing import CrossSigningStore
from storage.stores.device_lists import DeviceListStore
from storage.stores.devices import DeviceStore
from storage.stores.e2e_keys import E2eKeyStore
from storage.stores.event_timestamps import EventTimestampStore
from storage.stores.events import EventStore, StateHistoryStore
from storage.stores.filters import FilterStore
from storage.stores.key_backup import KeyBackupStore
from storage.stores.media import MediaStore
from storage.stores.openid_tokens import OpenIdTokenStore
from storage.stores.presence import PresenceStore
from storage.stores.profiles import ProfileStore
from storage.stores.push_actions import PushActionsStore
from storage.stores.push_rules import PushRulesStore
from storage.stores.pushers import PusherStore
from storage.stores.receipts import ReceiptStore
from storage.stores.registration_tokens import RegistrationTokenStore
from storage.stores.relations import RelationsStore
from storage.stores.reports import ReportStore
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.room_directory import RoomDirectoryStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.rooms import RoomStore
from storage.stores.search import SearchStore
from storage.stores.security_events import SecurityEventStore
from storage.stores.sessions import SessionStore
from storage.stores.to_device import ToDeviceStore
from storage.stores.ui_auth import UiAuthStore
from storage.stores.user_directory import UserDirectoryStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)


@dataclass
class Stores:
    users: UserStore
    devices: DeviceStore
    sessions: SessionStore
    registration_tokens: RegistrationTokenStore
    ui_auth: UiAuthStore
    profiles: ProfileStore
    security_events: SecurityEventStore
    account_data: AccountDataStore
    rooms: RoomStore
    events: EventStore
    state_history: StateHistoryStore
    room_members: RoomMemberStore
    room_aliases: RoomAliasStore
    filters: FilterStore
    openid_tokens: OpenIdTokenStore
    push_rules: PushRulesStore
    room_directory: RoomDirectoryStore
    user_directory: UserDirectoryStore
    receipts: ReceiptStore
    presence: PresenceStore
    relations: RelationsStore
    search: SearchStore
    pushers: PusherStore
    reports: ReportStore
    key_backup: KeyBackupStore


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
    ports: list[IListeningPort] = field(default_factory=list)
    _loops: list[LoopingCall] = field(default_factory=list)
    _on_stop: list[Any] = field(default_factory=list)

    def listen(self, reactor: Any = default_reactor) -> list[IListeningPort]:
        for listener in self.config.listeners:
            # Each listener serves only its ``resources`` (client / federation / metrics).
            self.ports += _listen(reactor, listener, listener_site(self.site, listener.resources))
        return self.ports

    async def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for port in self.ports:
            await port.stopListening()
        self.ports = []
        for fn in self._on_stop:
            fn()
        self.db.close()


def open_database(config: Config) -> Database:
    engine = create_engine(config.database)
    return Database(engine, config.database.pool_min, config.database.pool_max)


async def build_homeserver(
    config: Config, clock: Clock | None = None, db: Database | None = None,
    run_migrations: bool = True,
) -> Homeserver:
    clock = clock or Clock(default_reactor)
    db = db or open_database(config)
    if run_migrations:
        applied = await migrate(db, clock.time_msec())
        if applied:
            logger.info("applied schema migrations %s", applied)

    stores = Stores(
        users=UserStore(db),
        devices=DeviceStore(db),
        sessions=SessionStore(db),
        registration_tokens=RegistrationTokenStore(db),
        ui_auth=UiAuthStore(db),
        profiles=ProfileStore(db),
        security_events=SecurityEventStore(db),
        account_data=AccountDataStore(db),
        rooms=RoomStore(db),
        events=EventStore(db),
        state_history=StateHistoryStore(db),
        room_members=RoomMemberStore(db),
        room_aliases=RoomAliasStore(db),
        filters=FilterStore(db),
        openid_tokens=OpenIdTokenStore(db),
        push_rules=PushRulesStore(db),
        room_directory=RoomDirectoryStore(db),
        user_directory=UserDirectoryStore(db),
        receipts=ReceiptStore(db),
        presence=PresenceStore(db),
        relations=RelationsStore(db),
        search=SearchStore(db),
        pushers=PusherStore(db),
        reports=ReportStore(db),
        key_backup=KeyBackupStore(db),
    )
    plugin_manager = load_plugins(config.plugins)
    events = SecurityEventRecorder(stores.security_events, clock)
    events.add_sink(lambda ev: plugin_manager.hook.on_security_event(event=asdict(ev)))
    codec = AccessTokenCodec(config.auth, clock)
    cache = SessionCache(stores.sessions, clock, config.auth.session_cache_ttl)
    hasher = PasswordHasher(config.password_hashing)
    policy = PasswordPolicy(config.password_policy)
    password_auth = PasswordAuth(config.server_name, stores.users, hasher)
    sessions = SessionHandler(config.auth, clock, codec, stores.sessions, cache, events)
    devices = DeviceHandler(clock, stores.devices, sessions, events)
    registration = RegistrationHandler(
        config.server_name, config.registration, clock, stores.users, hasher, policy,
        spam_check=lambda uid: any(plugin_manager.hook.check_username_for_spam(user_id=uid)),
    )
    uia = UserInteractiveAuth(
        stores.ui_auth, stores.registration_tokens, clock, password_auth.check,
        password_auth.resolve_identifier,
    )
    account = AccountHandler(clock, stores.users, stores.profiles, hasher, policy, devices,
                             sessions, events)
    profile = ProfileHandler(config.server_name, stores.profiles)
    account_data = AccountDataHandler(stores.account_data)
    filters = FilterHandler(stores.filters)
    openid = OpenIdHandler(config.server_name, clock, stores.openid_tokens)
    push_rules = PushRulesHandler(stores.push_rules)
    devices.on_device_deleted.append(stores.pushers.delete_device_pushers)
    authenticator = TokenAuthenticator(codec, cache, stores.devices, clock)

    notifier = Notifier(clock)
    signing_key = load_or_generate_signing_key(config.signing_key_path)
    event_creation = EventCreationHandler(config.server_name, signing_key, clock, stores.events,
                                          stores.rooms, notifier)
    await event_creation.load_position()
    visibility = VisibilityHandler(stores.state_history, stores.room_members)
    room_reads = RoomReadHandler(stores.events, stores.room_members, visibility, event_creation)
    room_creation = RoomCreationHandler(config, clock, event_creation, stores.profiles,
                                        stores.room_aliases, stores.rooms)
    membership = MembershipHandler(config.server_name, event_creation, stores.room_members,
                                   stores.profiles, stores.room_aliases)
    account.leave_all_rooms = membership.leave_all_rooms  # deactivation parts rooms
    client_events = ClientEventSerializer(clock, stores.events)
    pagination = PaginationHandler(stores.events, stores.state_history, stores.room_members,
                                   EventTimestampStore(db), visibility, event_creation,
                                   client_events)
    redaction = RedactionHandler(event_creation, stores.events)
    room_upgrade = RoomUpgradeHandler(config.server_name, clock, event_creation, room_creation,
                                      stores.room_aliases, stores.rooms)
    sync = SyncHandler(clock, stores.events, event_creation, stores.room_members, visibility,
                       stores.account_data, account_data, notifier)
    await sync.load_positions()
    account_data.on_change.append(sync.note_account_data)
    presence = PresenceHandler(config.server_name, clock, stores.presence, stores.room_members,
                               stores.users, notifier, enabled=config.presence_enabled)
    await presence.load()
    typing_handler = TypingHandler(clock, stores.room_members, notifier, presence)
    receipts = ReceiptsHandler(clock, stores.receipts, stores.events, stores.room_members,
                               visibility, account_data, stores.account_data, notifier, presence)
    await receipts.load_position()
    sync.sources.extend([receipts, typing_handler, presence])
    # E2EE public keys and the device list stream (changed/left and key counts in sync).
    e2e_key_store = E2eKeyStore(db)
    device_lists = DeviceListHandler(DeviceListStore(db), e2e_key_store, stores.room_members,
                                     notifier)
    await device_lists.load_position()
    sync.sources.append(device_lists)
    event_creation.after_persist.append(device_lists.after_persist)
    devices.on_device_deleted.append(device_lists.on_device_deleted)
    e2e_keys = E2eKeysHandler(config.server_name, clock, e2e_key_store, device_lists)
    # To-device messages (a per-device inbox delivered in /sync) and cross-signing.
    to_device = ToDeviceHandler(config.server_name, clock, ToDeviceStore(db), stores.devices,
                                notifier)
    await to_device.load_position()
    sync.sources.append(to_device)
    devices.on_device_deleted.append(to_device.on_device_deleted)
    cross_signing = CrossSigningHandler(config.server_name, clock, CrossSigningStore(db),
                                        stores.devices)
    cross_signing.on_change.append(device_lists.notify_device_change)
    devices.on_device_deleted.append(cross_signing.on_device_deleted)
    e2e_keys.query_providers.append(cross_signing.query_provider)
    # The e2ee_only policy: refuse plaintext events; "everywhere" encrypts new rooms.
    if config.e2ee_policy != "off":
        e2ee_policy = E2eeOnlyPolicy(config.e2ee_policy)
        event_creation.event_validators.append(e2ee_policy.check_event)
        room_creation.default_initial_state.extend(e2ee_policy.default_initial_state())
    event_creation.after_persist.extend([typing_handler.after_persist, presence.after_persist])
    room_stats = RoomStatsUpdater(event_creation, stores.room_directory)
    event_creation.after_persist.append(room_stats.on_event)
    await room_stats.backfill()
    directory = DirectoryHandler(config.server_name, clock, event_creation, stores.room_aliases,
                                 stores.rooms, stores.room_members, stores.users,
                                 stores.room_directory)
    event_creation.state_validators["m.room.canonical_alias"] = directory.validate_canonical_alias
    user_directory = UserDirectoryHandler(stores.user_directory)
    # Relations: indexed after each persisted event (caught up at start-up), bundled
    # into events served by /sync and /event; search indexes only when enabled.
    relations = RelationsHandler(clock, stores.relations, stores.events, visibility, event_creation)
    relations_indexer = RelationsIndexer(stores.relations, stores.events)
    event_creation.after_persist.append(relations_indexer.on_event)
    await relations_indexer.catch_up(event_creation.current_position())
    sync.aggregations = relations.bundle
    sync.serializer = client_events  # redactions and prev_content applied in batches
    sync.push_rules = push_rules  # m.push_rules account data in sync
    push_rules.on_change.append(sync.note_account_data)
    # Push actions: rules evaluated once per persisted event (rulesets cached until they
    # change); unread counts in /sync and GET /notifications read the recorded rows.
    push_actions = PushActionsHandler(config.server_name, clock, PushActionsStore(db), push_rules,
                                      event_creation, stores.events, visibility, client_events)
    event_creation.after_persist.append(push_actions.on_event)
    push_rules.on_change.append(push_actions.on_rules_changed)
    sync.unread_counts = push_actions.unread_counts
    account_data.push_rules = push_rules  # GET .../account_data/m.push_rules
    room_reads.aggregations = relations.bundle
    client_events.aggregations = relations.bundle  # /messages, /context
    search_indexer = SearchIndexer(config.search_enabled, stores.search, stores.relations,
                                   stores.events, event_creation)
    event_creation.after_persist.append(search_indexer.on_event)
    await search_indexer.start(event_creation.current_position())
    search = SearchHandler(config.search_enabled, stores.search, stores.events, stores.room_members,
                           visibility, event_creation, relations, room_reads)
    hierarchy = HierarchyHandler(event_creation, stores.room_members, stores.room_directory,
                                 directory)

    media, url_previewer = build_media(config, clock, MediaStore(db), plugin_manager, default_reactor)
    router = Router()
    routes.register_all(
        router,
        routes.Components(
            config=config, clock=clock, stores=stores, events=events, sessions=sessions,
            devices=devices, registration=registration, uia=uia, account=account,
            password_auth=password_auth, profile=profile, account_data=account_data,
            filters=filters, openid=openid, push_rules=push_rules, event_creation=event_creation,
            room_creation=room_creation, room_reads=room_reads, membership=membership, sync=sync,
            directory=directory, user_directory=user_directory,
            typing=typing_handler, receipts=receipts, presence=presence,
            pagination=pagination, redaction=redaction, room_upgrade=room_upgrade,
            relations=relations, hierarchy=hierarchy, search=search, visibility=visibility,
            media=media, url_previewer=url_previewer,
            push_actions=push_actions, notifier=notifier, client_events=client_events,
            e2e_keys=e2e_keys, device_lists=device_lists,
            to_device=to_device, cross_signing=cross_signing,
            key_backup=KeyBackupHandler(stores.key_backup),
            legacy=LegacyHandler(LegacyDeps(
                clock, stores.events, stores.room_members, event_creation, visibility,
                room_reads, pagination, client_events, sync, account_data, directory, presence)),
            reporting=ReportingHandler(config.server_name, clock, stores.reports, stores.events,
                                       stores.room_members, visibility, event_creation,
                                       stores.users),
        ),
    )
    resource = MatrixResource(router, authenticator,
                              trusted_proxies=any(li.x_forwarded for li in config.listeners))
    # The WebSocket endpoint needs its own resource (it takes over the connection);
    # the root sends that one path there and every other path to MatrixResource.
    websockets = SyncWebSocketFactory(clock, authenticator, sync, filters, session_cache=cache,
                                      trusted_proxies=any(li.x_forwarded for li in config.listeners))
    root = RootResource(resource)
    root.mount(WS_PATH, websockets.make_resource())
    site = make_site(root, config.max_request_body_size, config.media.max_upload_size)
    hs = Homeserver(config, clock, db, stores, router, site, registration, sessions)

    cleanup = LoopingCall(lambda: _background(uia.expire_old_sessions()))
    cleanup.clock = clock._time  # noqa: SLF001 (the clock's own IReactorTime)
    cleanup.start(600, now=False)
    hs._loops.append(cleanup)
    hs._on_stop.append(websockets.close_all)
    hs._on_stop.append(hasher.stop)
    presence.start()
    hs._on_stop.append(presence.stop)
    return hs


def _background(coro: Any) -> None:
    from twisted.internet import defer

    d = defer.ensureDeferred(coro)
    d.addErrback(lambda f: logger.error("background task failed: %s", f.getErrorMessage()))


def _listen(reactor: Any, listener: ListenerConfig, site: server.Site) -> list[IListeningPort]:
    ports = []
    for address in listener.bind_addresses:
        if listener.tls_certificate_path and listener.tls_private_key_path:
            ports.append(reactor.listenSSL(listener.port, site, _tls_context(listener),
                                           interface=address))
        else:
            ports.append(reactor.listenTCP(listener.port, site, interface=address))
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
