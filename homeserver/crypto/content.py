"""Optional encryption at rest of stored message content and profile fields.

Off by default (``secrets.encrypt_event_content`` / ``secrets.encrypt_profiles``). For
deployments whose clients do not use end-to-end encryption: a copy of the database (a
backup, a dump, a stolen disk) then holds no message bodies or profile fields, only
envelopes (homeserver/crypto/at_rest.py) bound to their row: an event's JSON to its
event id, a profile field to its user (and field name). Plaintext exists only in the
server's memory.

A :class:`FieldCodec` is what a store holds: ``seal`` on write, ``open`` on read, so
every read path of the store decrypts. Rows written before the option was switched on
are plaintext (stored event JSON starts with ``{``, an envelope with ``pv1.``) and are
still read; ``parley keys rotate`` encrypts them (and, with the option switched off
again, writes them back as plaintext).

Costs and trade-offs (README, "Secrets at rest"): two AES-256-GCM operations per value
written and per value read (see bench/at_rest_cost.py for send and sync figures); the
database can no longer look inside what it stores, so server-side search
(``search.enabled``) cannot be combined with ``encrypt_event_content`` (the config is
refused: the index would hold the bodies in plaintext), and the user directory and
the admin user list match users by their id only, not by an encrypted display name.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from homeserver.crypto.at_rest import (
    PREFIX,
    AtRestError,
    Location,
    SecretVault,
    envelope_kid,
    is_envelope,
)

if TYPE_CHECKING:
    from homeserver.config.model import Config
    from storage.stores.all_stores import Stores

T = TypeVar("T")

# SQL LIKE pattern matching a sealed value (a bound parameter: for queries that must
# skip or find them); ``sql_sealed(column)`` the same test as an expression without
# parameters or '%' (which the PostgreSQL driver would take for a placeholder).
SEALED_LIKE = PREFIX + "%"


def sql_sealed(column: str) -> str:
    return f"SUBSTR({column}, 1, {len(PREFIX)}) = '{PREFIX}'"


class FieldCodec:
    """Seals values of one kind (event JSON, profile fields) when ``enabled`` and a key
    is configured; opens sealed values whatever ``enabled`` says (the option may have
    been switched off after values were written) and passes plaintext through."""

    def __init__(self, vault: SecretVault, enabled: bool) -> None:
        if enabled and vault.keyring is None:
            raise ValueError("encryption at rest of content needs secrets.at_rest_key")
        self.vault = vault
        self.enabled = enabled

    def seal(self, text: str, loc: Location) -> str:
        return self.vault.seal(text, loc) if self.enabled else text

    def open(self, stored: str, loc: Location) -> str:
        """The plaintext; AtRestError (not yet audited: see :meth:`audited`) for a
        tampered or moved value, or for plaintext when it is no longer accepted."""
        if not is_envelope(stored):
            if self.enabled and not self.vault.accept_plaintext:
                raise AtRestError("plaintext_refused", loc)
            return stored
        return self.vault.open_sync(stored, loc)

    def open_optional(self, stored: str | None, loc: Location) -> str | None:
        return None if stored is None else self.open(stored, loc)

    async def audited(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, auditing an AtRestError it raises (then re-raising it)."""
        try:
            return await fn()
        except AtRestError as e:
            await self.vault.refused(e)
            raise

    def needs_rewrite(self, stored: str | None) -> bool:
        """For ``parley keys rotate``: a value not in its target form (sealed under the
        active key when enabled, plaintext when not)."""
        if stored is None:
            return False
        if not self.enabled:
            return is_envelope(stored)
        assert self.vault.keyring is not None
        return envelope_kid(stored) != self.vault.keyring.active

    def rewrite(self, stored: str, loc: Location) -> str:
        """``stored`` in its target form (AtRestError if it cannot be opened)."""
        return self.seal(self.open(stored, loc), loc)


PLAIN_CODEC = FieldCodec(SecretVault(None), False)


def event_location(event_id: str) -> Location:
    return Location("events", "json", event_id)


def profile_location(user_id: str, column: str) -> Location:
    """``displayname`` / ``avatar_url`` of ``profiles``."""
    return Location("profiles", column, user_id)


def profile_field_location(user_id: str, field_name: str) -> Location:
    # JSON: a user id and field name cannot be confused by any separator they contain.
    return Location("profile_fields", "value", json.dumps([user_id, field_name]))


def install_content_codecs(config: Config, stores: Stores, vault: SecretVault) -> None:
    """Give every store that reads or writes event JSON or profile fields its codec,
    and the pusher store the vault its pushkeys are sealed with (composition root:
    homeserver/areas/accounts.py)."""
    stores.pushers.vault = vault
    events = FieldCodec(vault, config.at_rest.encrypt_event_content)
    stores.events.codec = events
    stores.state_history.codec = events
    stores.event_timestamps.codec = events
    profiles = FieldCodec(vault, config.at_rest.encrypt_profiles)
    stores.profiles.codec = profiles
    stores.users.profile_codec = profiles
    stores.user_directory.profile_codec = profiles
    stores.roles.profile_codec = profiles
