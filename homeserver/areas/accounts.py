"""The accounts area: tokens and sessions, devices, registration, UIA, passwords,
profiles, account data, filters, OpenID, push rules."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from homeserver.audit.id_key import load_or_generate_audit_key
from homeserver.auth.access_tokens import AccessTokenCodec
from homeserver.auth.account_status import AccountStatusCache, AccountStatusGate
from homeserver.auth.authenticator import TokenAuthenticator
from homeserver.auth.mfa import MfaHandler, MfaRequiredGate
from homeserver.auth.password_auth import PasswordAuth
from homeserver.auth.password_policy import PasswordPolicy
from homeserver.auth.passwords import PasswordHasher
from homeserver.auth.ratelimit import AuthRateLimiters
from homeserver.auth.requester import Authenticator
from homeserver.auth.session_cache import SessionCache
from homeserver.auth.ui_auth import UserInteractiveAuth
from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.crypto.at_rest import audit_refusals, vault_from_config
from homeserver.crypto.content import install_content_codecs
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
from plugins.host import PluginHost
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
    authenticator: Authenticator
    auth_limits: AuthRateLimiters
    mfa: MfaHandler


def build_accounts(config: Config, clock: Clock, stores: Stores,
                   plugins: PluginHost) -> AccountsArea:
    events = SecurityEventRecorder(stores.security_events, clock,
                                   id_key=load_or_generate_audit_key(config.data_dir))
    # Secrets at rest: TOTP secrets sealed under secrets.at_rest_key; refusals audited.
    stores.mfa.vault = vault_from_config(config, audit_refusals(events))
    # Optional: event JSON and profile fields sealed too (secrets.encrypt_*).
    install_content_codecs(config, stores, stores.mfa.vault)
    events.add_sink(lambda ev: plugins.on_security_event(asdict(ev)))
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
        spam_check=plugins.gate_fn("check_username_for_spam", "user_id"), events=events,
    )
    auth_limits = AuthRateLimiters.from_config(clock, config.rate_limits)
    # Its uia_password limit is the shared limiter's, set by homeserver/app.py.
    uia = UserInteractiveAuth(stores.ui_auth, clock, password_auth.check,
                              password_auth.resolve_identifier)
    uia.on_password_failure.append(events.uia_password_failure)
    account = AccountHandler(clock, stores.users, stores.profiles, hasher, policy, devices,
                             sessions, events)
    push_rules = PushRulesHandler(stores.push_rules)
    # TOTP: a second factor in every UIA flow of an enrolled user, and (mfa.required)
    # a gate on every access token of a user who must enrol and has not.
    mfa = MfaHandler(config.mfa, config.server_name, clock, stores.mfa, stores.users, hasher,
                     events)
    uia.second_factor = mfa
    account.on_deactivated.append(mfa.forget_user)
    authenticator: Authenticator = TokenAuthenticator(codec, cache, stores.devices, clock)
    if config.mfa.required != "none":
        authenticator = MfaRequiredGate(authenticator, mfa)
    # Locked / suspended accounts and forced password resets (admin API, issue 15).
    account_status = AccountStatusCache(stores.roles, clock)
    authenticator = AccountStatusGate(authenticator, account_status)
    password_auth.account_check = account_status.check_login
    return AccountsArea(
        security_events=events, session_cache=cache, hasher=hasher,
        password_auth=password_auth, sessions=sessions, devices=devices,
        registration=registration, uia=uia, account=account,
        profile=ProfileHandler(config.server_name, stores.profiles),
        account_data=AccountDataHandler(stores.account_data, push_rules),
        filters=FilterHandler(stores.filters),
        openid=OpenIdHandler(config.server_name, clock, stores.openid_tokens),
        push_rules=push_rules,
        authenticator=authenticator,
        auth_limits=auth_limits, mfa=mfa,
    )
