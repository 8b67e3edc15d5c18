"""The accounts area: tokens and sessions, devices, registration, UIA, passwords,
profiles, account data, filters, OpenID, push rules."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pluggy

from homeserver.auth.access_tokens import AccessTokenCodec
from homeserver.auth.authenticator import TokenAuthenticator
from homeserver.auth.password_auth import PasswordAuth
from homeserver.auth.password_policy import PasswordPolicy
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.ratelimit import AuthRateLimiters
from homeserver.auth.session_cache import SessionCache
from homeserver.auth.ui_auth import UserInteractiveAuth
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.handlers.account import AccountHandler
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.devices import DeviceHandler
from homeserver.handlers.filters import FilterHandler
from homeserver.handlers.openid import OpenIdHandler
from homeserver.handlers.profile import ProfileHandler
from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.handlers.registration import RegistrationHandler
from homeserver.handlers.security_events import SecurityEventRecorder
from homeserver.handlers.sessions import SessionHandler
from storage.stores.all_stores import Stores


@dataclass(frozen=True)
class AccountsArea:
    security_events: SecurityEventRecorder
    session_cache: SessionCache
    hasher: PasswordHasher
    password_auth: PasswordAuth
    sessions: SessionHandler
    devices: DeviceHandler
    registration: RegistrationHandler
    uia: UserInteractiveAuth
    account: AccountHandler
    profile: ProfileHandler
    account_data: AccountDataHandler
    filters: FilterHandler
    openid: OpenIdHandler
    push_rules: PushRulesHandler
    authenticator: TokenAuthenticator
    auth_limits: AuthRateLimiters


def build_accounts(config: Config, clock: Clock, stores: Stores,
                   plugin_manager: pluggy.PluginManager) -> AccountsArea:
    events = SecurityEventRecorder(stores.security_events, clock)
    events.add_sink(lambda ev: plugin_manager.hook.on_security_event(event=asdict(ev)))
    codec = AccessTokenCodec(config.auth, clock)
    cache = SessionCache(stores.sessions, clock, config.auth.session_cache_ttl)
    hasher = PasswordHasher(config.password_hashing)
    policy = PasswordPolicy(config.password_policy)
    password_auth = PasswordAuth(config.server_name, stores.users, hasher)
    sessions = SessionHandler(config.auth, clock, codec, stores.sessions, cache, events)
    devices = DeviceHandler(clock, stores.devices, sessions, events)
    devices.on_device_deleted.append(stores.pushers.delete_device_pushers)
    registration = RegistrationHandler(
        config.server_name, config.registration, clock, stores.users, hasher, policy,
        spam_check=lambda uid: any(plugin_manager.hook.check_username_for_spam(user_id=uid)),
    )
    auth_limits = AuthRateLimiters.from_config(clock, config.rate_limits)
    uia = UserInteractiveAuth(stores.ui_auth, clock, password_auth.check,
                              password_auth.resolve_identifier, auth_limits.uia_password)
    uia.on_password_failure.append(events.uia_password_failure)
    account = AccountHandler(clock, stores.users, stores.profiles, hasher, policy, devices,
                             sessions, events)
    push_rules = PushRulesHandler(stores.push_rules)
    return AccountsArea(
        security_events=events, session_cache=cache, hasher=hasher,
        password_auth=password_auth, sessions=sessions, devices=devices,
        registration=registration, uia=uia, account=account,
        profile=ProfileHandler(config.server_name, stores.profiles),
        account_data=AccountDataHandler(stores.account_data, push_rules),
        filters=FilterHandler(stores.filters),
        openid=OpenIdHandler(config.server_name, clock, stores.openid_tokens),
        push_rules=push_rules,
        authenticator=TokenAuthenticator(codec, cache, stores.devices, clock),
        auth_limits=auth_limits,
    )
