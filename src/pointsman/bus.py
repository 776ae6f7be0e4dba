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
(``logger=None``): FastStream otherwise writes two INFO lines per message. FastStream declares,
starts, stops and reconnects every subscriber; the messages its core NATS subscriptions deliver
go straight to the handler (:func:`_direct`: the same decode, timer and reply, without
FastStream's ~20 us of per-message machinery, measured in services/picker/README.md).

FastStream's Prometheus and OpenTelemetry middlewares are not used: they export their own
metric names (``faststream_received_messages_total``, ...) and messaging spans per message,
not the decision metrics (``docs/metrics.md``) and decision spans the services record
themselves, and each would add work to every pick.

**Security.** Each service connects as its own identity (an NKey seed, or a NATS ``.creds``
file) over TLS where configured; both are read and checked in :func:`nats_config` at start-up
(a missing or malformed credential ends the process with a message naming the key and where it
was read from) and become connection options in :meth:`NatsConfig.security` only: the broker
takes them as FastStream's ``security=``, a raw nats-py client as :meth:`NatsConfig.connect_options`.
A server that refuses the credential ends :meth:`ServiceBus.start` with :class:`CredentialError`
instead of retrying it forever. Each identity's replies come to its own inbox prefix
(``_INBOX.<identity>``, :mod:`pointsman.natsauth`), which no other identity may read or write.
Nothing else in the code base connects to NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from faststream import BaseMiddleware
from faststream.exceptions import IncorrectState
from faststream.middlewares import AckPolicy
from faststream.nats import NatsBroker
from faststream.nats.message import NatsMessage
from pydantic import BaseModel, ConfigDict, Field

from pointsman import natsauth
from pointsman.runtime import Fatal
from pointsman.v1.routes import IDENTITIES, Route

if TYPE_CHECKING:
    from faststream.message import StreamMessage
    from faststream.security import BaseSecurity
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between connection attempts, at start-up and after a lost connection.
RECONNECT_WAIT_S = 0.5
#: Seconds one connection attempt may take.
CONNECT_TIMEOUT_S = 2
#: Seconds a stopping service waits for in-flight handlers and the connection's drain.
STOP_TIMEOUT_S = 2.0

_ENCODER = msgspec.json.Encoder()


#: Environment variables that win over the ``nats:`` keys (each container sets its own).
ENV = {"url": "NATS_URL", "nkey_seed_file": "NATS_NKEY_SEED_FILE"}


class CredentialError(Fatal):
    """The NATS server refused this process's credential: retrying cannot fix it."""


class NatsTls(BaseModel):
    """``nats.tls``: verify the server's certificate (and present a client one for mutual TLS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: CA bundle that signed the server's certificate; set = TLS on (also for ``nats://`` URLs).
    ca_file: str | None = None
    #: Client certificate and key, for a server that verifies clients (``verify: true``).
    cert_file: str | None = None
    key_file: str | None = None
    #: Name to verify the server's certificate against (default: the URL's host).
    server_name: str | None = None


class NatsConfig(BaseModel):
    """The top-level ``nats:`` section of the config file; ``$NATS_URL`` wins over ``url`` and
    ``$NATS_NKEY_SEED_FILE`` over ``nkey_seed_file`` (each service's container sets its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Server URL (a comma-separated list for a cluster); ``tls://`` turns TLS on.
    url: str = "nats://127.0.0.1:4222"
    #: Prefix of the connection names the server shows (``connz``): ``<name>-<service>``.
    name: str = "pointsman"
    #: File holding this service's NKey seed (``SU...``); the server knows only its public key.
    nkey_seed_file: str | None = None
    #: A NATS ``.creds`` file (user JWT and seed), for servers in operator/JWT mode, instead.
    credentials_file: str | None = None
    tls: NatsTls = Field(default_factory=NatsTls)

    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    @property
    def tls_on(self) -> bool:
        return self.tls.ca_file is not None or any(u.startswith("tls://") for u in self.servers())

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls_on:
            return None
        context = ssl.create_default_context(cafile=self.tls.ca_file)
        if self.tls.cert_file:
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return context

    def security(self) -> BaseSecurity | None:
        """FastStream security options: the identity (NKey or creds) and TLS."""
        from faststream.nats.security import NatsCredentials, NatsNKey, NatsSecurity

        context = self.ssl_context()
        tls: dict[str, Any] = {"ssl_context": context, "tls_hostname": self.tls.server_name}
        if context is not None:
            tls["use_ssl"] = True
        if self.nkey_seed_file:
            return NatsNKey.from_file(self.nkey_seed_file, **tls)
        if self.credentials_file:
            return NatsCredentials.from_file(self.credentials_file, **tls)
        if context is not None:
            return NatsSecurity(**tls)
        return None

    def connect_options(self, identity: str | None = None) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect`` for a raw nats-py client of ``identity``
        (benchmarks, tests): the same credential, TLS and reply inbox as a service's."""
        from faststream.nats.security import parse_security

        options = {k: v for k, v in parse_security(self.security()).items() if v is not None}
        if identity is not None:
            options["inbox_prefix"] = natsauth.inbox_prefix(identity)
        return {"servers": self.servers(), **options}

    def credential(self) -> str:
        """Which credential this process presents, and where it was read from (for errors)."""
        if self.nkey_seed_file:
            return f"the NKey seed {self.nkey_seed_file} (nats.nkey_seed_file or ${ENV['nkey_seed_file']})"
        if self.credentials_file:
            return f"the credentials file {self.credentials_file} (nats.credentials_file)"
        return f"no credential (set nats.nkey_seed_file or ${ENV['nkey_seed_file']})"


def _check(cfg: NatsConfig) -> None:
    """Fail at start-up, naming the key, on a credential or TLS file that cannot work."""
    from pointsman.configfile import ConfigError

    if cfg.nkey_seed_file and cfg.credentials_file:
        raise ConfigError("nats: set one of nkey_seed_file and credentials_file, not both")
    files = {
        f"nats.nkey_seed_file (or ${ENV['nkey_seed_file']})": cfg.nkey_seed_file,
        "nats.credentials_file": cfg.credentials_file,
        "nats.tls.ca_file": cfg.tls.ca_file,
        "nats.tls.cert_file": cfg.tls.cert_file,
        "nats.tls.key_file": cfg.tls.key_file,
    }
    for key, path in files.items():
        if path is None:
            continue
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
        if key.startswith("nats.nkey_seed_file"):
            seed = text.strip()
            try:
                import nkeys

                nkeys.from_seed(seed.encode()).public_key  # noqa: B018
            except Exception:
                raise ConfigError(f"{key}: {path} does not hold an NKey seed (SU...)") from None
            if not seed.startswith("SU"):
                raise ConfigError(f"{key}: {path} holds a seed, but not a user's (SU...)")
    if bool(cfg.tls.cert_file) != bool(cfg.tls.key_file):
        raise ConfigError("nats.tls: cert_file and key_file go together")


def nats_config(data: Mapping[str, Any]) -> NatsConfig:
    """The ``nats:`` section of a whole config file, with ``$NATS_URL`` and
    ``$NATS_NKEY_SEED_FILE`` applied; raises ``ConfigError`` on a credential that cannot work."""
    from pointsman import configfile

    cfg = configfile.section(dict(data), "nats", NatsConfig)
    update = {key: os.environ[env] for key, env in ENV.items() if os.environ.get(env)}
    if update:
        cfg = cfg.model_copy(update=update)
    _check(cfg)
    return cfg


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


async def _parse(
    message: Msg, original: Callable[[Msg], Awaitable[StreamMessage[Msg]]]
) -> StreamMessage[Msg]:
    """FastStream's NATS core parser without its per-message extras that no Pointsman handler
    reads: no subject path match (no route has path parameters) and no random correlation id
    (``uuid4``, a ``getrandom`` system call per message): the reply inbox, unique per request,
    or the subject stands for it. A message a FastStream publisher sent (its headers carry a
    correlation id: the in-memory test broker's) goes to FastStream's own parser."""
    headers = message.header or {}
    if "correlation_id" in headers:
        return await original(message)
    message._ackd = True  # core NATS: nothing to acknowledge (as FastStream's core parser)
    return NatsMessage(
        raw_message=message,
        body=message.data,
        reply_to=message.reply,
        headers=headers,
        content_type=headers.get("content-type", ""),
        correlation_id=message.reply or message.subject,
    )


class _HandlerTimer(BaseMiddleware):
    """Times one request from its arrival to the end of its handling (the reply sent), for the
    subjects a service names: what ``pointsman_picker_decision_seconds`` and
    ``pointsman_classifier_request_seconds`` measure, on FastStream's own path (the direct path,
    :func:`_direct`, times the same span itself). Only
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


def _direct(
    subscriber: Any,
    route: Route[Any, Any],
    handler: Callable[[Received[Any]], Awaitable[Any]],
    timers: Mapping[str, Callable[[float], None]],
) -> None:
    """Hand the subscriber's core NATS messages straight to ``handler``.

    FastStream's ``process_message`` spends about 20 us of CPU on each message (context scopes,
    an exit stack, a lock, its logging middleware, the parser and decoder chain, a response
    object) around a handler that needs none of it: the codec and parser are ours, the broker
    logs nothing, core NATS has nothing to acknowledge, and replies go out with
    ``Msg.respond``. Per pick request the picker takes two or three messages (the pick, its
    completion, its share of snapshots). So the subscription FastStream made for this
    subscriber calls this function instead: the same decode as :class:`RouteCodec`, the same
    handler, the same timer as :class:`_HandlerTimer`. FastStream still declares, starts,
    stops and reconnects the subscriber; a message from a FastStream publisher (its headers
    carry a correlation id, as the in-memory ``TestNatsBroker``'s do) and any subscriber with
    more than one handler or with middlewares of its own go through FastStream's own path.
    """
    full = subscriber.consume
    decode = route.decode
    subject = route.subject

    async def consume(msg: Msg) -> Any:
        headers = msg.headers
        if (headers and "correlation_id" in headers) or len(subscriber.calls) != 1:
            return await full(msg)
        if not subscriber.running:
            return None
        started = time.perf_counter()
        try:  # an empty body is an empty object: ``ModelsRequest`` has no fields
            received = Received(decode(msg.data or b"{}"), None, headers or {}, msg.subject, msg)
        except msgspec.DecodeError as exc:
            received = Received(None, str(exc), headers or {}, msg.subject, msg)
        try:
            await handler(received)
        except Exception:  # as FastStream's consume: one message's failure ends nothing
            log.exception("handler of %s failed", subject)
        if msg.reply and (observe := timers.get(msg.subject)) is not None:
            observe(time.perf_counter() - started)
        return None

    subscriber.consume = consume


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
        """``service`` is ``<identity>`` or ``<identity>-<replica>``; an identity of
        :data:`pointsman.v1.routes.IDENTITIES` gets its own reply inbox prefix.
        ``timers`` maps a subject to the histogram observer of its handling time."""
        self.config = config
        self.name = f"{config.name}-{service}"
        self._last_error = ""
        self._stopping = False
        self._refused: str | None = None
        #: The subscribers are started and the server has their subscriptions (see ``start``).
        self._subscribed = False
        self._start_task: asyncio.Future[Any] | None = None
        identity = service.partition("-")[0]
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
        if identity in IDENTITIES:
            options["inbox_prefix"] = natsauth.inbox_prefix(identity)
        self._timers: dict[str, Callable[[float], None]] = dict(timers or {})
        if timers:
            options["middlewares"] = (functools.partial(_HandlerTimer, observe=self._timers),)
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
            parser=_parse,
            no_reply=True,
            ack_policy=AckPolicy.MANUAL,
            max_workers=max_workers,
            pending_msgs_limit=pending_msgs_limit,
        )
        # FastStream rebuilds the subscriber's subject (an Address, by regular expressions) for
        # every message only to label log lines, and the broker logs nothing: label them once.
        log_context = {"subject": subject or route.subject, "queue": route.queue or ""}
        subscriber.get_log_context = lambda _message: log_context

        def declare(handler: Callable[[Received[Any]], Awaitable[Any]]) -> Any:
            if route.reply is None:
                subscriber(handler)
                _direct(subscriber, route, handler, self._timers)
                return subscriber

            async def answer(msg: Received[Any]) -> Any:
                answer_ = await handler(msg)
                raw = msg.raw
                # None: the handler answers later itself (``msg.raw.respond``), without holding
                # up the subscriber's next message (the picker's flow control).
                if answer_ is not None and raw is not None and raw.reply:
                    with contextlib.suppress(Exception):  # the asker may be gone: not an error
                        await raw.respond(encode(answer_))
                return answer_

            subscriber(answer)
            _direct(subscriber, route, answer, self._timers)
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
        """Connected, with the subscribers started and known to the server: a service that says
        it is ready on this gets the requests sent to it (no "no responders" in between)."""
        conn = self.client
        return self._subscribed and conn is not None and bool(conn.is_connected)

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Connect (waiting for NATS) and start the subscribers declared so far. ``False`` when
        ``stop`` was set first; raises :class:`CredentialError` when the server refuses this
        process's credential (retrying cannot fix that)."""
        starting = asyncio.ensure_future(self.broker.start())
        self._start_task = starting
        stopping = asyncio.ensure_future(
            stop.wait() if stop is not None else asyncio.Event().wait()
        )
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._start_task = None
        if not starting.done():
            starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting  # its error (if any) is retrieved here, never left unread
        if self._refused is not None:
            await self.stop()
            raise CredentialError(self._refused)
        if starting.cancelled():
            return False
        starting.result()
        # The SUBs went out before this PING: its PONG means the server has them. Until then a
        # request to this service could get "no responders" although /readyz said ready (seen
        # once in CI, on a loaded machine).
        conn = self.client
        if conn is not None:
            try:
                await conn.flush(timeout=int(STOP_TIMEOUT_S * 2))
            except Exception as exc:  # reconnecting: nats-py sends the SUBs again then
                log.warning("NATS flush after subscribing failed: %s", exc)
        self._subscribed = True
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
            async with asyncio.timeout(STOP_TIMEOUT_S * 2):
                await self.broker.stop()
        except Exception as exc:
            log.debug("NATS drain failed (%s); closing", exc)
            conn = self.client
            if conn is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1):
                        await conn.close()

    async def _on_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if _refused(exc):
            self._refused = (
                f"NATS at {self.config.url} refused {self.config.credential()}: {text}; "
                "check that this service's credential is the one the server's "
                "authorization lists"
            )
            if self._start_task is not None and not self._start_task.done():
                self._start_task.cancel()
            elif text != self._last_error:
                self._last_error = text
                log.error("%s (retrying every %.1f s)", self._refused, RECONNECT_WAIT_S)
            return
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


def _refused(exc: BaseException) -> bool:
    """An error the server sends for a credential it does not accept."""
    import nats.errors

    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text
