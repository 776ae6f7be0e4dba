"""The one place where a Pointsman process meets NATS: the ``nats:`` config, the connection
policy, and the FastStream broker every service declares its handlers on.

Every service (and the shim's request side) connects through :class:`ServiceBus`, so start-up
and reconnection behave the same everywhere:

* a service starts its ops server first (alive, not ready), then waits for NATS as long as it
  takes: nats-py retries every :data:`RECONNECT_WAIT_S` (its own reconnect loop, which also
  covers the first connect), and each distinct error is logged once, not every attempt;
* once connected, a lost server is reconnected the same way; subscriptions come back by
  themselves; ``connected`` turns false meanwhile, so ``/readyz`` says so;
* SIGTERM while waiting stops cleanly (:meth:`ServiceBus.start` returns ``False``).

Handlers are FastStream subscribers with msgspec codecs built from the route declarations of
:mod:`pointsman.v1.routes` (no pydantic, no FastDepends: ``apply_types=False``). A handler gets a
:class:`Received` (the decoded body, or why it did not decode, and the headers that carry the
trace context) and returns the reply struct, which the codec encodes. The broker logs nothing
(``logger=None``): FastStream otherwise writes two INFO lines per message.

FastStream's Prometheus and OpenTelemetry middlewares are not used: they export their own
metric names (``faststream_received_messages_total``, ...) and messaging spans per message,
not the decision metrics (``docs/metrics.md``) and decision spans the services record
themselves, and each would add work to every pick.

**Security seam (issue 11).** Credentials (NKey seed or creds file) and TLS belong in
:class:`NatsConfig` and become connection options in :meth:`NatsConfig.security` only: the
broker takes them as FastStream's ``security=``, a raw nats-py client as
``faststream.nats.security.parse_security(...)``. Nothing else in the code base connects to NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from faststream import BaseMiddleware
from faststream.exceptions import IncorrectState
from faststream.middlewares import AckPolicy
from faststream.nats import NatsBroker
from pydantic import BaseModel, ConfigDict

from pointsman.v1.routes import Route

if TYPE_CHECKING:
    from faststream.message import StreamMessage
    from faststream.security import BaseSecurity
    from nats.aio.client import Client

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between connection attempts, at start-up and after a lost connection.
RECONNECT_WAIT_S = 0.5
#: Seconds one connection attempt may take.
CONNECT_TIMEOUT_S = 2
#: Seconds a stopping service waits for in-flight handlers and the connection's drain.
STOP_TIMEOUT_S = 2.0

_ENCODER = msgspec.json.Encoder()


class NatsConfig(BaseModel):
    """The top-level ``nats:`` section of the config file; ``$NATS_URL`` wins over ``url``.

    Issue 11 adds the per-service identity (NKey seed or credentials file) and TLS here, turned
    into connection options by :meth:`security` alone.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Server URL (a comma-separated list for a cluster).
    url: str = "nats://127.0.0.1:4222"
    #: Prefix of the connection names the server shows (``connz``): ``<name>-<service>``.
    name: str = "pointsman"

    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def security(self) -> BaseSecurity | None:
        """FastStream security options of the connection (none yet: plain TCP, no auth)."""
        return None


def nats_config(data: Mapping[str, Any]) -> NatsConfig:
    """The ``nats:`` section of a whole config file, with ``$NATS_URL`` applied."""
    from pointsman import configfile

    cfg = configfile.section(dict(data), "nats", NatsConfig)
    env = os.environ.get("NATS_URL")
    return cfg.model_copy(update={"url": env}) if env else cfg


@dataclass(frozen=True, slots=True)
class Received(Generic[T]):
    """One message of a route as a handler gets it: ``body`` is ``None`` when the payload did
    not decode, and ``error`` says why (handlers answer or count that; they never raise)."""

    body: T | None
    error: str | None
    headers: Mapping[str, str]
    subject: str
    #: The nats-py message, for answering it (see :meth:`ServiceBus.subscriber`).
    raw: Any = field(default=None, repr=False, compare=False)


def encode(message: Any) -> bytes:
    """Bus bytes of a reply or event: msgspec JSON for structs, bytes as they are."""
    if isinstance(message, bytes):
        return message
    if message is None:
        return b""
    return _ENCODER.encode(message)


class StructCodec:
    """FastStream codec of the broker: publishes and replies in msgspec JSON."""

    __slots__ = ()

    async def decode(self, msg: StreamMessage[Any]) -> Any:
        return msg.body

    async def encode(self, msg: Any, serializer: Any = None) -> tuple[bytes, str | None]:
        return encode(msg), None


class RouteCodec(StructCodec):
    """FastStream codec of one route's subscriber: decodes its request type with msgspec."""

    __slots__ = ("_route",)

    def __init__(self, route: Route[Any, Any]) -> None:
        self._route = route

    async def decode(self, msg: StreamMessage[Any]) -> Received[Any]:
        raw = msg.raw_message
        subject = str(getattr(raw, "subject", "") or "")
        try:  # an empty body is an empty object: ``ModelsRequest`` has no fields
            return Received(self._route.decode(msg.body or b"{}"), None, msg.headers, subject, raw)
        except msgspec.DecodeError as exc:
            return Received(None, str(exc), msg.headers, subject, raw)


class _HandlerTimer(BaseMiddleware):
    """Times one request from its arrival to the end of its handling (the reply sent), for the
    subjects a service names: what ``pointsman_picker_decision_seconds`` and
    ``pointsman_classifier_request_seconds`` measure, FastStream's own work included. Only
    messages that ask for a reply count (FastStream also runs broker middlewares on the replies
    of the process's own requests)."""

    __slots__ = ("_observe", "_started")

    def __init__(
        self, msg: Any, /, *, context: Any, observe: Mapping[str, Callable[[float], None]]
    ) -> None:
        super().__init__(msg, context=context)
        asks = bool(getattr(msg, "reply", ""))
        self._observe = observe.get(getattr(msg, "subject", "")) if asks else None
        self._started = time.perf_counter()

    async def after_processed(self, *exc: Any) -> bool:
        if self._observe is not None:
            self._observe(time.perf_counter() - self._started)
        return False


class ServiceBus:
    """One service's NATS connection: a FastStream :class:`NatsBroker` with Pointsman's policy.

    Declare handlers with :meth:`subscriber` before :meth:`start`; a subscriber declared after
    it (a picker joins the pick queue group only once it knows the pools) is started with
    ``await sub.start()``.
    """

    def __init__(
        self,
        config: NatsConfig,
        service: str,
        *,
        timers: Mapping[str, Callable[[float], None]] | None = None,
    ) -> None:
        """``timers`` maps a subject to the histogram observer of its handling time."""
        self.config = config
        self.name = f"{config.name}-{service}"
        self._last_error = ""
        self._stopping = False
        options: dict[str, Any] = {
            "name": self.name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,  # at start-up too: wait for NATS as long as it takes
            "reconnect_time_wait": RECONNECT_WAIT_S,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "security": config.security(),
            "graceful_timeout": STOP_TIMEOUT_S,
        }
        if timers:
            options["middlewares"] = (functools.partial(_HandlerTimer, observe=dict(timers)),)
        self.broker = NatsBroker(
            config.servers(), logger=None, apply_types=False, codec=StructCodec(), **options
        )

    def subscriber(
        self,
        route: Route[Any, Any],
        *,
        subject: str | None = None,
        max_workers: int | None = None,
        pending_msgs_limit: int | None = None,
    ) -> Callable[[Callable[[Received[Any]], Awaitable[Any]]], Any]:
        """Declare a handler of ``route``: ``bus.subscriber(route)(handler)`` makes FastStream's
        subscriber (the route's subject unless ``subject``, its queue group, its codec) and
        returns it (``await sub.start()`` starts one declared after :meth:`start`).

        Two choices keep FastStream's per-message work down (``bench.scheduling.decision`` and a
        CPU-per-message comparison, recorded in services/picker/README.md): no acknowledgement
        middleware (core NATS has no acks: ``AckPolicy.MANUAL``), and a request route's reply
        is sent with nats-py's ``Msg.respond`` as soon as the handler returns it, instead of
        through FastStream's response publisher (which adds a correlation id and headers that
        no Pointsman client reads). The handler still returns the reply: that is what
        FastStream's in-memory ``TestNatsBroker`` hands back to a test's request.
        """
        broker: Any = self.broker  # one call for core subscribers, with or without workers
        subscriber = broker.subscriber(
            subject or route.subject,
            queue=route.queue,
            codec=RouteCodec(route),
            no_reply=True,
            ack_policy=AckPolicy.MANUAL,
            max_workers=max_workers,
            pending_msgs_limit=pending_msgs_limit,
        )

        def declare(handler: Callable[[Received[Any]], Awaitable[Any]]) -> Any:
            if route.reply is None:
                subscriber(handler)
                return subscriber

            async def answer(msg: Received[Any]) -> Any:
                answer_ = await handler(msg)
                raw = msg.raw
                if raw is not None and raw.reply:
                    with contextlib.suppress(Exception):  # the asker may be gone: not an error
                        await raw.respond(encode(answer_))
                return answer_

            subscriber(answer)
            return subscriber

        return declare

    @property
    def client(self) -> Client | None:
        """The underlying nats-py client once connected (JetStream, hot-path publishes)."""
        try:
            conn: Client = self.broker.connection
        except IncorrectState:
            return None
        return conn

    @property
    def connected(self) -> bool:
        conn = self.client
        return conn is not None and bool(conn.is_connected)

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Connect (waiting for NATS) and start the subscribers declared so far. ``False`` when
        ``stop`` was set first; raises only on an error retrying cannot fix (a refused login)."""
        starting = asyncio.ensure_future(self.broker.start())
        if stop is None:
            await starting
        else:
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
                return False
            starting.result()
        self._last_error = ""
        log.info("connected to NATS at %s as %s", self.config.url, self.name)
        return True

    async def publish(self, subject: str, data: bytes) -> bool:
        """Best-effort publish on the raw client (no FastStream headers); ``False`` when NATS
        is not connected or refused it. Events lost this way are counted by their callers."""
        conn = self.client
        if conn is None or not conn.is_connected:
            return False
        try:
            await conn.publish(subject, data)
        except Exception as exc:
            log.debug("publish on %s failed: %s", subject, exc)
            return False
        return True

    async def stop(self) -> None:
        """Stop the subscribers and drain the connection, bounded: with NATS gone a drain would
        wait on reconnects."""
        self._stopping = True
        try:
            await asyncio.wait_for(self.broker.stop(), STOP_TIMEOUT_S * 2)
        except Exception as exc:
            log.debug("NATS drain failed (%s); closing", exc)
            conn = self.client
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1)

    async def _on_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_error:
            self._last_error = text
            log.warning(
                "NATS at %s: %s (retrying every %.1f s)", self.config.url, text, RECONNECT_WAIT_S
            )

    async def _on_disconnected(self) -> None:
        if self.client is not None and not self._stopping:  # not failed first attempts
            log.warning("NATS disconnected from %s", self.config.url)

    async def _on_reconnected(self) -> None:
        self._last_error = ""
        log.info("NATS reconnected to %s", self.config.url)
