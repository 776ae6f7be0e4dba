"""The shim's side of the bus: typed request-reply calls with deadlines, and events.

Every route comes from :mod:`pointsman.v1.routes` (the services subscribe to the same
declarations), and the connection from the shared shell :class:`pointsman.bus.ServiceBus`: the
shim starts without NATS (it must serve, fail-open, without one) and connects when it appears.
Requests go out on the connection's nats-py client (``Client.request``), not FastStream's
request API: that one adds a correlation id and a content-type header to every pick, which
sends the picker's message down FastStream's full parser, and its own publish and response
machinery in the shim (issue 10, item 3: the measurement is in the README, beside the
``--request-side`` comparison). The shim's subscriber (policies) is FastStream's.

Every failure to get an answer becomes one :class:`BusUnavailable` with a short ``kind``
(``timeout``, ``no_responders``, ``disconnected``, ``bad_reply``), which the handlers turn into the
configured fail-open or fail-closed answer and count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

import msgspec
import nats.errors

from pointsman import tracing
from pointsman.bus import NatsConfig, Received, ServiceBus
from pointsman.v1 import (
    CompletionEvent,
    ModelsReply,
    ModelsRequest,
    PickReply,
    PickRequest,
    routes,
)
from pointsman.v1.cache import CacheStore
from pointsman.v1.classify import ClassifyReply, ClassifyRequest
from pointsman.v1.policy import InferencePolicy
from pointsman.v1.routes import Route

log = logging.getLogger(__name__)
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)

_MODELS_REQUEST = routes.MODELS.encode(ModelsRequest())


class BusUnavailable(Exception):
    def __init__(self, service: str, kind: str, detail: str = "") -> None:
        super().__init__(f"{service}: {kind}{': ' + detail if detail else ''}")
        self.service = service
        self.kind = kind


class BusTooLarge(Exception):
    """A request whose bus message would exceed the NATS server's ``max_payload``: the request
    is answered 413, never sent on unchecked (the generated nats-server configs set
    ``max_payload`` above ``shim.max_body_bytes``, so this needs a smaller server limit)."""

    def __init__(self, service: str, size: int, limit: int) -> None:
        super().__init__(f"{service}: message of {size} bytes over max_payload {limit}")
        self.service = service
        self.size = size
        self.limit = limit


class Bus:
    """A NATS connection that may not exist yet: the shim must serve (fail-open) without one."""

    def __init__(self, nats: NatsConfig) -> None:
        self.service = ServiceBus(nats, "shim")

    async def start(self, stop: asyncio.Event | None = None) -> bool:
        """Connect, waiting for NATS as long as it takes; ``False`` when ``stop`` came first."""
        return await self.service.start(stop)

    @property
    def connected(self) -> bool:
        return self.service.connected

    @property
    def max_payload(self) -> int:
        """The connected server's largest message in bytes (0: not known yet)."""
        client = self.service.client
        return int(getattr(client, "max_payload", 0) or 0) if client is not None else 0

    async def _call(
        self, service: str, route: Route[Req, Rep], payload: bytes, timeout: float
    ) -> Rep:
        headers: dict[str, str] = {}
        tracing.inject(headers)
        if not self.service.connected:
            raise BusUnavailable(service, "disconnected")
        limit = self.max_payload
        if limit and len(payload) > limit:
            raise BusTooLarge(service, len(payload), limit)
        client = self.service.client
        if client is None:
            raise BusUnavailable(service, "disconnected")
        try:
            msg = await client.request(
                route.subject, payload, timeout=timeout, headers=headers or None
            )
        except nats.errors.NoRespondersError:
            raise BusUnavailable(service, "no_responders") from None
        except nats.errors.TimeoutError:
            raise BusUnavailable(service, "timeout") from None
        except nats.errors.MaxPayloadError:
            raise BusTooLarge(service, len(payload), limit) from None
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            raise BusUnavailable(service, "disconnected", type(exc).__name__) from None
        try:
            return route.decode_reply(msg.data)
        except msgspec.DecodeError as exc:
            raise BusUnavailable(service, "bad_reply", str(exc)) from None

    async def pick(self, request: PickRequest, timeout: float) -> PickReply:
        return await self._call("picker", routes.PICK, routes.PICK.encode(request), timeout)

    async def models(self, timeout: float) -> ModelsReply:
        return await self._call("picker", routes.MODELS, _MODELS_REQUEST, timeout)

    async def classify(self, request: ClassifyRequest, timeout: float) -> ClassifyReply:
        route = routes.CLASSIFY
        return await self._call("classifier", route, route.encode(request), timeout)

    async def publish_completion(self, event: CompletionEvent) -> None:
        """Best effort: a lost event must never break the response path."""
        route = routes.COMPLETIONS
        await self.service.publish(route.subject, route.encode(event))

    async def publish_cache_store(self, message: CacheStore) -> None:
        """Best effort: a lost store is a later cache miss, never a failed response."""
        route = routes.CACHE_STORE
        await self.service.publish(route.subject, route.encode(message))

    def on_policy(self, handler: Callable[[InferencePolicy], None]) -> None:
        """Call ``handler`` with every InferencePolicy the collector publishes (declared before
        :meth:`start`; a message that does not decode is logged and dropped)."""

        async def received(msg: Received[InferencePolicy]) -> None:
            if msg.body is None:
                log.warning("bad policy message: %s", msg.error)
                return
            handler(msg.body)

        self.service.subscriber(routes.POLICY)(received)

    async def close(self) -> None:
        await self.service.stop()
