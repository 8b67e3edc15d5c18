"""The rooms area: the one event path (builder, persister, fan-out) and everything that
creates or reads room events: creation, membership, redaction, upgrades, reads and
pagination, directory, relations, search, hierarchy and push actions."""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.crypto.signing_key_file import load_signing_key
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.directory import DirectoryHandler, RoomStatsUpdater
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.event_fanout import EventFanout
from homeserver.handlers.event_persister import EventPersister, live_events
from homeserver.handlers.hierarchy import HierarchyHandler
from homeserver.handlers.membership import MembershipHandler
from homeserver.handlers.pagination import PaginationHandler
from homeserver.handlers.push_actions import PushActionsHandler
from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.handlers.redaction import RedactionHandler
from homeserver.handlers.relations import RelationsHandler, RelationsIndexer
from homeserver.handlers.room_creation import RoomCreationHandler
from homeserver.handlers.room_reads import RoomReadHandler
from homeserver.handlers.room_upgrade import RoomUpgradeHandler
from homeserver.handlers.search import SearchHandler, SearchIndexer
from homeserver.handlers.user_directory import UserDirectoryHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.notifier import NotifierInterface
from homeserver.replication.multi_writer import events_positions
from plugins.e2ee_only import E2eeOnlyPolicy
from storage.stores.all_stores import Stores


@dataclass(frozen=True)
class RoomsArea:
    fanout: EventFanout
    persister: EventPersister
    event_creation: EventCreationHandler
    visibility: VisibilityHandler
    client_events: ClientEventSerializer
    room_reads: RoomReadHandler
    room_creation: RoomCreationHandler
    membership: MembershipHandler
    pagination: PaginationHandler
    redaction: RedactionHandler
    room_upgrade: RoomUpgradeHandler
    directory: DirectoryHandler
    user_directory: UserDirectoryHandler
    relations: RelationsHandler
    search: SearchHandler
    hierarchy: HierarchyHandler
    push_actions: PushActionsHandler


async def build_rooms(config: Config, clock: Clock, stores: Stores, notifier: NotifierInterface,
                      push_rules: PushRulesHandler) -> RoomsArea:
    # One event path: local events are built by event_creation and stored by the
    # persister, which publishes each stored event to the fan-out's subscribers.
    fanout = EventFanout()
    persister = EventPersister(clock, stores.events, stores.rooms, fanout, notifier,
                               events_positions(config.workers,  # several writers?
                                                stores.events.allocate_stream_ordering,
                                                stores.events.allocate_stream_orderings))
    await persister.load_position()
    signing_key = load_signing_key(config)  # encrypted at rest with secrets.at_rest_key
    creation = EventCreationHandler(config.server_name, signing_key, clock, stores.events,
                                    stores.rooms, persister)
    visibility = VisibilityHandler(stores.state_history, stores.room_members)
    # Relations: indexed after each persisted event (caught up at start-up), bundled
    # into events served by /sync, /event, /messages and /context.
    relations = RelationsHandler(clock, stores.relations, stores.events, visibility, creation)
    client_events = ClientEventSerializer(clock, stores.events, relations.bundle,
                                          stores.users, stores.room_members)
    client_events.forms_size = config.event_cache_size
    relations.serializer = client_events
    room_reads = RoomReadHandler(stores.events, stores.room_members, visibility, creation,
                                 relations.bundle)
    room_reads.serializer = client_events.serialize
    # The e2ee_only policy: refuse plaintext events; "everywhere" encrypts new rooms.
    # (Its event check is a built-in plugin: plugins/wiring.py.)
    e2ee_policy = E2eeOnlyPolicy(config.e2ee_policy) if config.e2ee_policy != "off" else None
    room_creation = RoomCreationHandler(
        config, clock, creation, stores.profiles, stores.room_aliases, stores.rooms,
        default_initial_state=e2ee_policy.default_initial_state() if e2ee_policy else [])
    directory = DirectoryHandler(config.server_name, clock, creation, stores.room_aliases,
                                 stores.rooms, stores.room_members, stores.users,
                                 stores.room_directory)
    creation.state_validators["m.room.canonical_alias"] = directory.validate_canonical_alias
    room_stats = RoomStatsUpdater(creation, stores.room_directory)
    fanout.subscribe("room_stats", live_events(room_stats.on_event))
    await room_stats.backfill()
    creation.event_validators.append(relations.validate_event_relation)
    relations_indexer = RelationsIndexer(stores.relations, stores.events)
    fanout.subscribe("relations", lambda rec: relations_indexer.on_event(rec.event))
    await relations_indexer.catch_up(creation.current_position())
    # Push actions: rules evaluated once per persisted event (rulesets cached until they
    # change), a published turn's rows written in one transaction; unread counts in
    # /sync and GET /notifications read the recorded rows.
    push_actions = PushActionsHandler(config.server_name, clock, stores.push_actions, push_rules,
                                      creation, stores.events, visibility, client_events)
    fanout.subscribe_batch("push_actions", push_actions.on_records)
    push_rules.on_change.append(push_actions.on_rules_changed)
    # Search indexes only when enabled (caught up at start-up).
    search_indexer = SearchIndexer(config.search_enabled, stores.search, stores.relations,
                                   stores.events, creation)
    fanout.subscribe("search", lambda rec: search_indexer.on_event(rec.event))
    await search_indexer.start(creation.current_position())
    membership = MembershipHandler(config.server_name, creation, stores.room_members,
                                   stores.profiles, stores.room_aliases, stores.users)
    # Guests leave a room once its guest access is revoked (in the background: the
    # leaves are events of the same room, published after this delivery).
    fanout.subscribe("guest_kick", live_events(membership.on_event_persisted))
    room_upgrade = RoomUpgradeHandler(config.server_name, clock, creation, room_creation,
                                      stores.room_aliases, stores.rooms, push_rules)
    # Joining a replacement room copies the user's push rules about the old room.
    fanout.subscribe("upgrade_push_rules", live_events(room_upgrade.on_event_persisted))
    return RoomsArea(
        fanout=fanout, persister=persister, event_creation=creation, visibility=visibility,
        client_events=client_events, room_reads=room_reads, room_creation=room_creation,
        membership=membership,
        pagination=PaginationHandler(stores.events, stores.state_history, stores.room_members,
                                     stores.event_timestamps, visibility, creation,
                                     client_events, stores.account_data),
        redaction=RedactionHandler(creation, stores.events),
        room_upgrade=room_upgrade,
        directory=directory,
        user_directory=UserDirectoryHandler(stores.user_directory),
        relations=relations,
        search=SearchHandler(config.search_enabled, stores.search, stores.events,
                             stores.room_members, visibility, creation, relations, room_reads),
        hierarchy=HierarchyHandler(creation, stores.room_members, stores.room_directory,
                                   directory),
        push_actions=push_actions,
    )
