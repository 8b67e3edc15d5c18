"""The Redis side of replication: one connection publishing to the deployment's
replication channel, one subscribed to it (reconnecting with back-off when Redis goes
away). Messages are small JSON objects; nothing secret and no message content is ever
published (stream positions, user and room ids, session ids being revoked)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from homeserver.config.model import RedisConfig

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
# A message bigger than this is dropped unread (a bounded parser on every worker).
MAX_MESSAGE_BYTES = 1 << 20


class _Subscriber(txredisapi.SubscriberProtocol):
    """Subscribes on connect; hands every message of the channel to the link."""

    factory: _SubscriberFactory

    def connectionMade(self) -> Any:  # noqa: N802 (Twisted's name)
        d = super().connectionMade()
        d.addCallback(lambda _: self.subscribe(self.factory.link.channel) if self._ready
                      else None)
        d.addCallback(lambda _: self.factory.subscribed(self) if self._ready else None)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        logger.warning("replication: subscribing failed: %s", failure.getErrorMessage())
        if self.transport is not None:
            self.transport.loseConnection()

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:  # noqa: N802
        self.factory.link.received(message)

    def connectionLost(self, why: Failure) -> None:  # noqa: N802
        super().connectionLost(why)
        self.factory.lost(self)


class _SubscriberFactory(protocol.ReconnectingClientFactory):
    maxDelay = 5.0  # noqa: N815 (Twisted's name): retry at least every 5 s
    initialDelay = 0.2  # noqa: N815
    isLazy = True  # noqa: N815 (read by txredisapi on an AUTH failure)

    def __init__(self, link: RedisLink, password: str | None) -> None:
        self.link = link
        self._password = password
        self.current: _Subscriber | None = None

    def buildProtocol(self, addr: Any) -> _Subscriber:  # noqa: N802
        p = _Subscriber(password=self._password, charset="utf-8")
        p.factory = self
        return p

    def subscribed(self, proto: _Subscriber) -> None:
        self.resetDelay()
        self.current = proto
        self.link.connected()

    def lost(self, proto: _Subscriber) -> None:
        if self.current is proto:
            self.current = None
            self.link.disconnected()

    def connectionError(self, msg: str) -> None:  # noqa: N802 (txredisapi's name)
        logger.error("replication: %s", msg)


class RedisLink:
    """Publish to and receive from ``<key_prefix>replication``. ``on_message`` gets
    each decoded message; ``on_connected`` runs after every (re)subscription, so the
    owner catches up on what it may have missed while disconnected."""

    def __init__(self, config: RedisConfig, reactor: Any,
                 on_message: Callable[[JsonDict], None],
                 on_connected: Callable[[], None]) -> None:
        self.channel = f"{config.key_prefix}replication"
        self._reactor = reactor
        self._timeout = max(config.timeout, 0.5)
        self._on_message = on_message
        self._on_connected = on_connected
        self.is_connected = False
        self.publish_failures = 0
        self._publishing_ok = True
        self._pub = txredisapi.lazyConnection(
            host=config.host, port=config.port, dbid=config.db, password=config.password,
            reconnect=True, connectTimeout=self._timeout, replyTimeout=self._timeout)
        self._factory = _SubscriberFactory(self, config.password)
        self._connector = reactor.connectTCP(config.host, config.port, self._factory,
                                             timeout=self._timeout)

    # -- receiving

    def received(self, raw: Any) -> None:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        if not isinstance(raw, str) or len(raw) > MAX_MESSAGE_BYTES:
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            logger.warning("replication: dropped a message that is not JSON")
            return
        if isinstance(msg, dict):
            try:
                self._on_message(msg)
            except Exception:  # noqa: BLE001 (one bad message must not stop the link)
                logger.exception("replication: applying a message failed")

    def connected(self) -> None:
        if not self.is_connected:
            logger.info("replication: subscribed to %s", self.channel)
        self.is_connected = True
        self._on_connected()

    def disconnected(self) -> None:
        self.is_connected = False
        logger.warning("replication: lost the Redis subscription; reconnecting")

    def drop_subscription(self) -> None:
        """Close the subscribing connection (it reconnects): tests and operators."""
        current = self._factory.current
        if current is not None and current.transport is not None:
            current.transport.abortConnection()

    def pause(self) -> None:
        """Drop the subscription and do not reconnect until :meth:`resume` (tests, and
        an operator's way to exercise the catch-up)."""
        self._factory.stopTrying()
        self.drop_subscription()

    def resume(self) -> None:
        self._factory.continueTrying = True
        self._factory.resetDelay()
        self._connector.connect()

    # -- publishing

    async def publish(self, msg: JsonDict) -> None:
        """Best effort: a failure is logged once per outage and counted; readers catch
        up from the database (homeserver/replication/__init__.py)."""
        try:
            d = self._pub.publish(self.channel, json.dumps(msg, separators=(",", ":")))
            d.addTimeout(self._timeout, self._reactor)
            await d
        except Exception as e:  # noqa: BLE001 (Redis down: readers catch up later)
            self.publish_failures += 1
            if self._publishing_ok:
                self._publishing_ok = False
                logger.warning("replication: publishing to Redis failed (%s); workers "
                               "catch up from the database", type(e).__name__)
            return
        if not self._publishing_ok:
            self._publishing_ok = True
            logger.warning("replication: publishing to Redis works again")

    async def close(self) -> None:
        self._factory.stopTrying()
        current = self._factory.current
        self._factory.current = None
        if current is not None and current.transport is not None:
            current.transport.loseConnection()
        self._connector.disconnect()
        try:
            await self._pub.disconnect()
        except Exception:  # noqa: BLE001 (shutting down)
            logger.debug("replication: Redis disconnect failed", exc_info=True)
        await defer.succeed(None)
