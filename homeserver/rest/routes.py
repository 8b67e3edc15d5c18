"""Registers every servlet on the router: the one place to see all endpoint families."""

from __future__ import annotations

from dataclasses import dataclass

from federation.openid import OpenIdUserInfoServlet
from federation.threepid_onbind import ThreepidOnBindServlet
from homeserver.appservice.handler import AppserviceHandler
from homeserver.areas.rooms_admin import RoomsAdminArea
from homeserver.auth.mfa import MfaHandler
from homeserver.auth.password_auth import PasswordAuth
from homeserver.auth.ratelimit import AuthRateLimiters
from homeserver.auth.ui_auth import UserInteractiveAuth
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.gdpr.export import ExportJobs
from homeserver.handlers.account import AccountHandler
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.admin_actions import AdminMediaHandler
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.cross_signing import CrossSigningHandler
from homeserver.handlers.device_lists import DeviceListHandler
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.directory import DirectoryHandler
from homeserver.handlers.e2e_keys import E2eKeysHandler
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.filters import FilterHandler
from homeserver.handlers.gdpr_export import GdprExportHandler
from homeserver.handlers.hierarchy import HierarchyHandler
from homeserver.handlers.identity import IdentityHandler
from homeserver.handlers.key_backup import KeyBackupHandler
from homeserver.handlers.legacy import LegacyHandler
from homeserver.handlers.login_tokens import LoginTokenHandler
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
from homeserver.handlers.relations import RelationsHandler
from homeserver.handlers.reporting import ReportingHandler
from homeserver.handlers.room_creation import RoomCreationHandler
from homeserver.handlers.room_reads import RoomReadHandler
from homeserver.handlers.room_upgrade import RoomUpgradeHandler
from homeserver.handlers.search import SearchHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.sessions import SessionHandler
from homeserver.handlers.sliding_sync import SlidingSyncHandler
from homeserver.handlers.sync import SyncHandler
from homeserver.handlers.to_device import ToDeviceHandler
from homeserver.handlers.typing import TypingHandler
from homeserver.handlers.user_directory import UserDirectoryHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.router import Router
from homeserver.media.handler import MediaHandler
from homeserver.media.preview import UrlPreviewer
from homeserver.notifier import NotifierInterface
from homeserver.rest.admin._auth import admin_auth_for
from homeserver.rest.admin.routes import register_admin
from homeserver.rest.client.account import AccountServlets
from homeserver.rest.client.account_data import AccountDataServlets
from homeserver.rest.client.appservice import AppserviceOnlyServlets
from homeserver.rest.client.cross_signing import CrossSigningServlets
from homeserver.rest.client.devices import DeviceServlets
from homeserver.rest.client.directory import DirectoryServlets
from homeserver.rest.client.discovery import DiscoveryServlets
from homeserver.rest.client.ephemeral import EphemeralServlets
from homeserver.rest.client.filters import FilterServlets
from homeserver.rest.client.gdpr_export import GdprExportServlets
from homeserver.rest.client.hierarchy import HierarchyServlets
from homeserver.rest.client.key_backup import KeyBackupServlets
from homeserver.rest.client.keys import KeyServlets
from homeserver.rest.client.legacy import LegacyServlets
from homeserver.rest.client.login import LoginServlets
from homeserver.rest.client.membership import MembershipServlets
from homeserver.rest.client.mfa import MfaServlets
from homeserver.rest.client.misc import MiscServlets
from homeserver.rest.client.openid import OpenIdServlets
from homeserver.rest.client.profile import ProfileServlets
from homeserver.rest.client.push_rules import PushRuleServlets
from homeserver.rest.client.pushers import PusherServlets
from homeserver.rest.client.redaction import RedactionServlets
from homeserver.rest.client.register import RegisterServlets
from homeserver.rest.client.relations import RelationServlets
from homeserver.rest.client.reporting import ReportingServlets
from homeserver.rest.client.room_history import RoomHistoryServlets
from homeserver.rest.client.room_upgrade import RoomUpgradeServlets
from homeserver.rest.client.rooms import RoomServlets
from homeserver.rest.client.search import SearchServlets
from homeserver.rest.client.sliding_sync import SlidingSyncServlets
from homeserver.rest.client.sync import SyncServlets
from homeserver.rest.client.tags import TagServlets
from homeserver.rest.client.thirdparty import ThirdPartyServlets
from homeserver.rest.client.threepid import ThreepidServlets
from homeserver.rest.client.to_device import ToDeviceServlets
from homeserver.rest.client.user_directory import UserDirectoryServlets
from homeserver.rest.client.whois import WhoisServlets
from homeserver.rest.media import MediaServlets
from storage.stores.all_stores import Stores


@dataclass
class Components:
    """What the servlets are built from (each servlet takes only what it needs)."""

    config: Config
    clock: Clock
    stores: Stores
    events: SecurityEventRecorder
    sessions: SessionHandler
    devices: DeviceHandler
    registration: RegistrationHandler
    uia: UserInteractiveAuth
    account: AccountHandler
    password_auth: PasswordAuth
    profile: ProfileHandler
    account_data: AccountDataHandler
    filters: FilterHandler
    openid: OpenIdHandler
    push_rules: PushRulesHandler
    event_creation: EventCreationHandler
    room_creation: RoomCreationHandler
    room_reads: RoomReadHandler
    membership: MembershipHandler
    sync: SyncHandler
    directory: DirectoryHandler
    user_directory: UserDirectoryHandler
    typing: TypingHandler
    receipts: ReceiptsHandler
    presence: PresenceHandler
    pagination: PaginationHandler
    redaction: RedactionHandler
    room_upgrade: RoomUpgradeHandler
    relations: RelationsHandler
    hierarchy: HierarchyHandler
    search: SearchHandler
    media: MediaHandler
    url_previewer: UrlPreviewer
    visibility: VisibilityHandler
    push_actions: PushActionsHandler
    notifier: NotifierInterface
    client_events: ClientEventSerializer
    e2e_keys: E2eKeysHandler
    device_lists: DeviceListHandler
    key_backup: KeyBackupHandler
    to_device: ToDeviceHandler
    cross_signing: CrossSigningHandler
    legacy: LegacyHandler
    reporting: ReportingHandler
    auth_limits: AuthRateLimiters
    identity: IdentityHandler | None = None  # 3PID invites, bind/unbind, onbind
    mfa: MfaHandler | None = None
    gdpr_export: ExportJobs | None = None  # GDPR data export (homeserver/gdpr/)
    appservices: AppserviceHandler | None = None  # application services (bridges)
    rooms_admin: RoomsAdminArea | None = None  # rooms admin, shutdowns, background jobs


def register_all(router: Router, c: Components) -> None:
    DiscoveryServlets(c.config).register(router)
    auth_limits = c.auth_limits
    RegisterServlets(
        c.config.registration, c.registration, c.uia, c.devices,
        c.stores.registration_tokens, c.clock, auth_limits, c.sessions,
    ).register(router)
    login_tokens = LoginTokenHandler(c.config.login_tokens, c.clock, c.stores.login_tokens,
                                     c.devices, c.events, c.password_auth)
    LoginServlets(c.config.server_name, c.password_auth, c.devices, c.sessions,
                  auth_limits, c.uia, c.mfa, login_tokens).register(router)
    if c.mfa is not None:
        MfaServlets(c.mfa, c.uia).register(router)
    AccountServlets(c.account, c.uia,
                    c.config.registration.logout_devices_on_password_change).register(router)
    DeviceServlets(c.devices, c.uia).register(router)
    ProfileServlets(c.profile).register(router)
    AccountDataServlets(c.account_data).register(router)
    FilterServlets(c.filters).register(router)
    ThreepidServlets(c.identity).register(router)
    WhoisServlets(c.config.server_name, c.stores.users, c.devices,
                  admin_auth_for(c)).register(router)
    OpenIdServlets(c.openid).register(router)
    PushRuleServlets(c.push_rules).register(router)
    # Not behind federation.enabled: third parties holding a user's OpenID token need it
    # on non-federating servers too (Synapse's separate "openid" listener resource).
    OpenIdUserInfoServlet(c.openid).register(router)
    # Called by identity servers (not X-Matrix signed); local rooms need it too.
    if c.identity is not None:
        ThreepidOnBindServlet(c.identity).register(router)
    RoomServlets(c.clock, c.room_creation, c.event_creation, c.room_reads,
                 c.membership).register(router)
    MembershipServlets(c.membership, c.identity).register(router)
    RoomHistoryServlets(c.pagination).register(router)
    RedactionServlets(c.redaction).register(router)
    RoomUpgradeServlets(c.room_upgrade).register(router)
    SyncServlets(c.sync, c.filters, c.presence).register(router)
    SlidingSyncServlets(SlidingSyncHandler(  # MSC4186, built on /sync's pieces
        c.clock, c.sync, c.stores.room_members, c.stores.events, c.stores.sliding_sync,
        c.account_data, c.stores.account_data, c.notifier, push_rules=c.push_rules,
        unread_counts=c.push_actions.unread_counts)).register(router)
    EphemeralServlets(c.typing, c.receipts, c.presence).register(router)
    DirectoryServlets(c.directory).register(router)
    UserDirectoryServlets(c.user_directory).register(router)
    RelationServlets(c.relations).register(router)
    TagServlets(c.account_data, c.stores.account_data).register(router)
    PusherServlets(c.clock, c.stores.pushers).register(router)
    MiscServlets(c.clock, c.config.voip, c.stores.room_members,
                 c.push_actions.get_notifications).register(router)
    LegacyServlets(c.legacy).register(router)
    HierarchyServlets(c.hierarchy).register(router)
    SearchServlets(c.search).register(router)
    MediaServlets(c.media, c.url_previewer, admin_auth_for(c),
                  AdminMediaHandler(c.media, c.events)).register(router)
    KeyServlets(c.e2e_keys, c.device_lists).register(router)
    ToDeviceServlets(c.to_device).register(router)
    CrossSigningServlets(c.cross_signing, c.uia).register(router)
    KeyBackupServlets(c.key_backup).register(router)
    AppserviceOnlyServlets(c.appservices).register(router)
    ThirdPartyServlets(c.appservices).register(router)
    ReportingServlets(c.reporting).register(router)
    if c.gdpr_export is not None:
        GdprExportServlets(GdprExportHandler(c.gdpr_export, c.stores.users, c.events),
                           c.uia, c.config.public_baseurl).register(router)
    register_admin(router, c)
