"""Every store, opened on one database: what the composition root hands to the areas
it builds (each area takes only the stores it uses)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database
from storage.stores.account_data import AccountDataStore
from storage.stores.blocked_servers import BlockedServerStore
from storage.stores.cross_signing import CrossSigningStore
from storage.stores.device_lists import DeviceListStore
from storage.stores.devices import DeviceStore
from storage.stores.e2e_keys import E2eKeyStore
from storage.stores.event_timestamps import EventTimestampStore
from storage.stores.events import EventStore
from storage.stores.federation_queue import FederationQueueStore
from storage.stores.filters import FilterStore
from storage.stores.key_backup import KeyBackupStore
from storage.stores.login_tokens import LoginTokenStore
from storage.stores.media import MediaStore
from storage.stores.mfa import MfaStore
from storage.stores.openid_tokens import OpenIdTokenStore
from storage.stores.presence import PresenceStore
from storage.stores.profiles import ProfileStore
from storage.stores.purge_history import PurgeHistoryStore
from storage.stores.push_actions import PushActionsStore
from storage.stores.push_rules import PushRulesStore
from storage.stores.pushers import PusherStore
from storage.stores.receipts import ReceiptStore
from storage.stores.registration_tokens import RegistrationTokenStore
from storage.stores.relations import RelationsStore
from storage.stores.reports import ReportStore
from storage.stores.roles import RoleStore
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.room_directory import RoomDirectoryStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.rooms import RoomStore
from storage.stores.search import SearchStore
from storage.stores.security_events import SecurityEventStore
from storage.stores.sessions import SessionStore
from storage.stores.shadow_bans import ShadowBanStore
from storage.stores.sliding_sync import SlidingSyncStore
from storage.stores.state_history import StateHistoryStore
from storage.stores.to_device import ToDeviceStore
from storage.stores.ui_auth import UiAuthStore
from storage.stores.user_directory import UserDirectoryStore
from storage.stores.users import UserStore


@dataclass(frozen=True)
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
    event_timestamps: EventTimestampStore
    room_members: RoomMemberStore
    room_aliases: RoomAliasStore
    filters: FilterStore
    openid_tokens: OpenIdTokenStore
    push_rules: PushRulesStore
    push_actions: PushActionsStore
    room_directory: RoomDirectoryStore
    user_directory: UserDirectoryStore
    receipts: ReceiptStore
    presence: PresenceStore
    relations: RelationsStore
    search: SearchStore
    pushers: PusherStore
    reports: ReportStore
    key_backup: KeyBackupStore
    e2e_keys: E2eKeyStore
    device_lists: DeviceListStore
    to_device: ToDeviceStore
    cross_signing: CrossSigningStore
    media: MediaStore
    purge_history: PurgeHistoryStore
    mfa: MfaStore
    login_tokens: LoginTokenStore
    roles: RoleStore  # admin roles and account restrictions (schema 0031)
    blocked_servers: BlockedServerStore  # remote servers blocked by an admin (0036)
    shadow_bans: ShadowBanStore  # shadow-banned users (0036)
    sliding_sync: SlidingSyncStore  # MSC4186 room-list reads (no table)
    federation_queue: FederationQueueStore  # federation sender queue, inbound txns (0043)


def open_stores(db: Database) -> Stores:
    return Stores(
        users=UserStore(db), devices=DeviceStore(db), sessions=SessionStore(db),
        registration_tokens=RegistrationTokenStore(db), ui_auth=UiAuthStore(db),
        profiles=ProfileStore(db), security_events=SecurityEventStore(db),
        account_data=AccountDataStore(db), rooms=RoomStore(db), events=EventStore(db),
        state_history=StateHistoryStore(db), event_timestamps=EventTimestampStore(db),
        room_members=RoomMemberStore(db), room_aliases=RoomAliasStore(db),
        filters=FilterStore(db), openid_tokens=OpenIdTokenStore(db),
        push_rules=PushRulesStore(db), push_actions=PushActionsStore(db),
        room_directory=RoomDirectoryStore(db), user_directory=UserDirectoryStore(db),
        receipts=ReceiptStore(db), presence=PresenceStore(db), relations=RelationsStore(db),
        search=SearchStore(db), pushers=PusherStore(db), reports=ReportStore(db),
        key_backup=KeyBackupStore(db), e2e_keys=E2eKeyStore(db),
        device_lists=DeviceListStore(db), to_device=ToDeviceStore(db),
        cross_signing=CrossSigningStore(db), media=MediaStore(db),
        purge_history=PurgeHistoryStore(db), mfa=MfaStore(db),
        login_tokens=LoginTokenStore(db),
        roles=RoleStore(db),
        blocked_servers=BlockedServerStore(db), shadow_bans=ShadowBanStore(db),
        sliding_sync=SlidingSyncStore(db),
        federation_queue=FederationQueueStore(db),
    )
