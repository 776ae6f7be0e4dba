"""Fetching ``/metrics`` pages over HTTP (aiohttp, keep-alive connections)."""

from __future__ import annotations

import asyncio

import aiohttp


class ScrapeError(Exception):
    """The endpoint did not give a page; the message is short and goes into the snapshot."""


class HttpScraper:
    """One client session for every endpoint: pooled keep-alive connections, bounded body size."""

    def __init__(self, *, timeout_s: float, concurrency: int, max_body: int, path: str) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_body = max_body
        self._path = path
        self._connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=self._timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def fetch(self, address: str) -> bytes:
        url = f"http://{address}{self._path}"
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise ScrapeError(f"HTTP {resp.status}")
                if (resp.content_length or 0) > self._max_body:
                    raise ScrapeError(f"page larger than {self._max_body} bytes")
                chunks: list[bytes] = []
                total = 0
                async for chunk in resp.content.iter_any():
                    total += len(chunk)
                    if total > self._max_body:
                        raise ScrapeError(f"page larger than {self._max_body} bytes")
                    chunks.append(chunk)
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        except TimeoutError:
            raise ScrapeError("timeout") from None
        except aiohttp.ClientConnectorError as exc:
            raise ScrapeError(f"connect failed: {exc.os_error.strerror or exc}") from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError) as exc:
            raise ScrapeError(f"{type(exc).__name__}: {exc}"[:200]) from None

    async def close(self) -> None:
        await self._session.close()
