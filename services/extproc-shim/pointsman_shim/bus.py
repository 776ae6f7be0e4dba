"""The shim's side of the bus: typed request-reply calls with deadlines.

Every failure to get an answer becomes one :class:`BusUnavailable` with a short ``kind``
(``timeout``, ``no_responders``, ``disconnected``, ``bad_reply``), which the handlers turn into the
configured fail-open or fail-closed answer and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TypeVar

import msgspec
import nats
import nats.errors
from nats.aio.client import Client

from pointsman import tracing
from pointsman.v1 import (
    CompletionEvent,
    ModelsReply,
    ModelsRequest,
    PickReply,
    PickRequest,
    decode,
    encode,
    subjects,
)
from pointsman.v1.cache import CACHE_STORE, CacheStore
from pointsman.v1.classify import CLASSIFY, ClassifyReply, ClassifyRequest

log = logging.getLogger(__name__)
R = TypeVar("R")


class BusUnavailable(Exception):
    def __init__(self, service: str, kind: str, detail: str = "") -> None:
        super().__init__(f"{service}: {kind}{': ' + detail if detail else ''}")
        self.service = service
        self.kind = kind


class Bus:
    """A NATS connection that may not exist yet: the shim must serve (fail-open) without one."""

    def __init__(self, url: str, name: str = "pointsman-shim") -> None:
        self.url = url
        self.name = name
        self.nc: Client | None = None

    async def connect(self) -> None:
        """Connect once; raises if NATS is unreachable (callers retry)."""

        async def on_error(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        async def on_disconnect() -> None:
            log.warning("nats disconnected")

        async def on_reconnect() -> None:
            log.info("nats reconnected")

        self.nc = await nats.connect(
            self.url,
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
        log.info("connected to NATS at %s", self.url)

    @property
    def connected(self) -> bool:
        return self.nc is not None and bool(self.nc.is_connected)

    async def _call(
        self, service: str, subject: str, payload: bytes, timeout: float, kind: type[R]
    ) -> R:
        headers: dict[str, str] = {}
        tracing.inject(headers)
        if self.nc is None or not self.nc.is_connected:
            raise BusUnavailable(service, "disconnected")
        try:
            msg = await self.nc.request(subject, payload, timeout=timeout, headers=headers or None)
        except nats.errors.NoRespondersError:
            raise BusUnavailable(service, "no_responders") from None
        except nats.errors.TimeoutError:
            raise BusUnavailable(service, "timeout") from None
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            raise BusUnavailable(service, "disconnected", type(exc).__name__) from None
        try:
            return decode(msg.data, kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BusUnavailable(service, "bad_reply", str(exc)) from None

    async def pick(self, request: PickRequest, timeout: float) -> PickReply:
        return await self._call("picker", subjects.PICK, encode(request), timeout, PickReply)

    async def models(self, timeout: float) -> ModelsReply:
        return await self._call(
            "picker", subjects.MODELS, encode(ModelsRequest()), timeout, ModelsReply
        )

    async def classify(self, request: ClassifyRequest, timeout: float) -> ClassifyReply:
        return await self._call("classifier", CLASSIFY, encode(request), timeout, ClassifyReply)

    async def publish_completion(self, event: CompletionEvent) -> None:
        if self.nc is None or not self.nc.is_connected:
            return
        try:
            await self.nc.publish(subjects.COMPLETIONS, encode(event))
        except Exception as exc:  # a lost event must never break the response path
            log.debug("completion event not published: %s", exc)

    async def publish_cache_store(self, message: CacheStore) -> None:
        if self.nc is None or not self.nc.is_connected:
            return
        try:
            await self.nc.publish(CACHE_STORE, encode(message))
        except Exception as exc:  # a lost store is a later miss, never a failed response
            log.debug("cache store not published: %s", exc)

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            # Draining needs the server; with NATS gone it would wait on reconnects, so bound it.
            try:
                await asyncio.wait_for(self.nc.drain(), 2)
            except Exception:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.nc.close(), 1)
