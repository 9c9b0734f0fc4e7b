"""A minimal HTTP/1.1 client for the one hot path: POST a JSON body to a worker and read its
streamed (chunked) response, block by block, over pooled keep-alive connections.

Why not httpx here: per streamed token httpx/httpcore cost about 0.1-0.2 ms of CPU in the API
server (anyio wrappers, h11 events), which alone is several percent of a small model's decode
time on CPU. asyncio streams cost a small fraction of that. Everything else keeps using httpx.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class StreamConnectError(Exception):
    """The connection could not be opened (the worker is gone)."""


class StreamBroken(Exception):
    """The response ended early or was malformed."""


class StreamResponse:
    def __init__(self, client: StreamClient, key: tuple, conn: Conn, status: int, headers: dict[str, str]):
        self._client, self._key, self._conn = client, key, conn
        self.status, self.headers = status, headers
        self._done = False

    async def iter_blocks(self) -> AsyncIterator[bytes]:
        """Body data as it arrives (one HTTP chunk per block for chunked responses)."""
        reader = self._conn[0]
        timeout = self._client.read_timeout
        try:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    async with asyncio.timeout(timeout):
                        line = await reader.readuntil(b"\r\n")
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        async with asyncio.timeout(timeout):
                            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                                pass
                        break
                    async with asyncio.timeout(timeout):
                        data = await reader.readexactly(size + 2)
                    if data[-2:] != b"\r\n":
                        raise StreamBroken("malformed chunk: no CRLF after its data")
                    yield data[:-2]
            elif "content-length" in self.headers:
                remaining = int(self.headers["content-length"])
                while remaining > 0:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(min(remaining, 65536))
                    if not data:
                        raise StreamBroken("connection closed before the end of the body")
                    remaining -= len(data)
                    yield data
            else:  # body until the server closes the connection
                while True:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(65536)
                    if not data:
                        break
                    yield data
                self.headers["connection"] = "close"
            self._done = True
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError) as e:
            raise StreamBroken(f"the response stream broke: {e!r}") from e
        except TimeoutError as e:
            raise StreamBroken(f"no data for {timeout:.0f} s") from e
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([b async for b in self.iter_blocks()])

    async def aclose(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if self._done and self.headers.get("connection", "").lower() != "close":
            self._client._release(self._key, conn)
        else:
            conn[1].close()


class StreamClient:
    def __init__(
        self, connect_timeout: float = 10.0, read_timeout: float = 600.0, max_idle_per_host: int = 256
    ):
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_idle = max_idle_per_host
        self._idle: dict[tuple, list[Conn]] = {}
        self._ssl_context: ssl_module.SSLContext | None = None

    async def post(
        self,
        url: str,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> StreamResponse:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if tls else 80)
        key = (host, port, tls)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nAccept: */*\r\n{extra}\r\n"
        ).encode()
        # A pooled connection may have been closed by the server meanwhile: then retry once
        # on a fresh one (the request cannot have been processed if no response byte came).
        while True:
            conn, reused = self._take(key), True
            if conn is None:
                conn, reused = await self._connect(host, port, tls), False
            try:
                conn[1].write(head + body)
                status, headers = await self._read_head(conn[0])
                return StreamResponse(self, key, conn, status, headers)
            except (
                ConnectionError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                StreamBroken,
            ) as e:
                conn[1].close()
                if not reused:
                    raise StreamBroken(f"{url}: {e!r}") from e
            except TimeoutError as e:
                conn[1].close()
                raise StreamBroken(f"{url}: no response within {self.read_timeout:.0f} s") from e
            except asyncio.CancelledError:
                conn[1].close()  # the caller gave up (its client left): the worker sees the disconnect
                raise

    async def _connect(self, host: str, port: int, tls: bool) -> Conn:
        ctx = None
        if tls:
            if self._ssl_context is None:
                self._ssl_context = ssl_module.create_default_context()
            ctx = self._ssl_context
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await asyncio.open_connection(host, port, ssl=ctx, limit=1 << 20)
        except (OSError, TimeoutError) as e:
            raise StreamConnectError(f"cannot connect to {host}:{port}: {e}") from e

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        async with asyncio.timeout(self.read_timeout):
            raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as e:
            raise StreamBroken(f"bad status line {lines[0]!r}") from e
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    def _take(self, key: tuple) -> Conn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn[0].at_eof() and not conn[1].is_closing():
                return conn
            conn[1].close()
        return None

    def _release(self, key: tuple, conn: Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.max_idle and not conn[0].at_eof():
            idle.append(conn)
        else:
            conn[1].close()

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()
