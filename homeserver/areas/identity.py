"""The identity area: the client for trusted identity servers, 3PID invites and
bind/unbind (homeserver/handlers/identity.py), wired to deactivation (unbind every
3PID bound through us) and to room creation (``invite_3pid``)."""

from __future__ import annotations

from typing import Any

from homeserver.areas.accounts import AccountsArea
from homeserver.areas.rooms import RoomsArea
from homeserver.config.model import Config
from homeserver.crypto.signing_key_file import load_signing_key
from homeserver.handlers.identity import IdentityHandler, IdentityServerClient
from storage.database import Database
from storage.stores.all_stores import Stores
from storage.stores.threepid_binds import ThreepidBindStore


def build_identity(config: Config, db: Database, stores: Stores, accounts: AccountsArea,
                   rooms: RoomsArea, reactor: Any) -> IdentityHandler:
    """``reactor`` is the real one: outbound timeouts must not follow a test clock."""
    client = IdentityServerClient(config.identity_servers, reactor)
    identity = IdentityHandler(
        config.server_name, client, ThreepidBindStore(db), rooms.membership,
        rooms.event_creation, stores.room_members,
        load_signing_key(config))
    accounts.account.on_deactivated.append(identity.unbind_all)
    rooms.room_creation.invite_3pid = identity.invite
    return identity
