"""The lean HTTP/1.1 client (``services/stream_client``) against a real tiny asyncio server on
loopback: each body framing, pooling, a stale keep-alive connection and read timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from orchestr.services.stream_client import StreamBroken, StreamClient, StreamConnectError
from tests.conftest import free_port

Handler = Callable[[int, int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return head + await reader.readexactly(length)


class Server:
    """Counts connections; ``handler(conn_no, request_no, reader, writer)`` answers one request
    and returns whether to keep the connection for the next one."""

    def __init__(self, handler: Handler):
        self.handler, self.connections, self.requests = handler, 0, []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        try:
            while True:
                try:
                    self.requests.append(await _read_request(reader))
                except asyncio.IncompleteReadError:
                    break
                n += 1
                if not await self.handler(conn, n, reader, writer):
                    break
        finally:
            writer.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def chunked_with_trailers(conn, n, reader, writer) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"5;ext=1\r\nhello\r\n")
    await writer.drain()
    await asyncio.sleep(0.01)
    writer.write(b"6\r\n world\r\n0\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n")
    await writer.drain()
    return True


def test_chunked_body_with_trailers_arrives_chunk_by_chunk_and_the_connection_is_reused():
    async def main():
        server = Server(chunked_with_trailers)
        async with server as url:
            client = StreamClient(read_timeout=5)
            resp = await client.post(url + "/gen?x=1", b'{"a":1}', headers={"Authorization": "Bearer s"})
            assert resp.status == 200
            blocks = [b async for b in resp.iter_blocks()]
            assert blocks == [b"hello", b" world"]
            assert await (await client.post(url + "/gen", b"{}")).read() == b"hello world"
            await client.aclose()
        assert server.connections == 1  # the second request rode the pooled connection
        first = server.requests[0].decode()
        assert first.startswith("POST /gen?x=1 HTTP/1.1\r\n") and "Authorization: Bearer s\r\n" in first
        assert first.endswith('{"a":1}')

    run(main())


def test_content_length_body():
    async def handler(conn, n, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b" world")
        await writer.drain()
        return True

    async def main():
        server = Server(handler)
        async with server as url:
            client = StreamClient(read_timeout=5)
            resp = await client.post(url, b"{}")
            assert (resp.status, await resp.read()) == (201, b"hello world")
            assert await (await client.post(url, b"{}")).read() == b"hello world"
            await client.aclose()
        assert server.connections == 1

    run(main())


def test_close_delimited_body_is_read_to_the_end_and_not_pooled():
    async def handler(conn, n, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"part two")
        await writer.drain()
        return False  # closing ends the body

    async def main():
        server = Server(handler)
        async with server as url:
            client = StreamClient(read_timeout=5)
            assert await (await client.post(url, b"{}")).read() == b"part one, part two"
            assert await (await client.post(url, b"{}")).read() == b"part one, part two"
            await client.aclose()
        assert server.connections == 2

    run(main())


def test_stale_keep_alive_connection_is_replaced_transparently():
    async def handler(conn, n, reader, writer) -> bool:
        if conn == 1 and n == 2:
            return False  # the server dropped the idle connection just as the request came
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async def main():
        server = Server(handler)
        async with server as url:
            client = StreamClient(read_timeout=5)
            assert await (await client.post(url, b"{}")).read() == b"ok"
            assert await (await client.post(url, b"{}")).read() == b"ok"  # retried on a fresh one
            await client.aclose()
        assert server.connections == 2 and len(server.requests) == 3

    run(main())


def test_fresh_connection_closed_before_any_response_is_broken():
    async def handler(conn, n, reader, writer) -> bool:
        return False

    async def main():
        async with Server(handler) as url:
            client = StreamClient(read_timeout=5)
            with pytest.raises(StreamBroken):
                await client.post(url, b"{}")
            await client.aclose()

    run(main())


@pytest.mark.parametrize("stall_after", [b"", b"4\r\nab", b"4\r\nabcd\r\n"])
def test_read_timeout_on_the_head_inside_and_between_chunks(stall_after):
    async def handler(conn, n, reader, writer) -> bool:
        if stall_after:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + stall_after)
            await writer.drain()
        await asyncio.sleep(5)
        return False

    async def main():
        async with Server(handler) as url:
            client = StreamClient(read_timeout=0.3)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(StreamBroken, match="no (data|response)"):
                resp = await client.post(url, b"{}")
                await resp.read()
            assert loop.time() - t0 < 2
            await client.aclose()

    run(main())


def test_truncated_chunked_body_is_broken_and_refused_connection_is_a_connect_error():
    async def handler(conn, n, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
        await writer.drain()
        return False

    async def main():
        async with Server(handler) as url:
            client = StreamClient(read_timeout=5)
            resp = await client.post(url, b"{}")
            with pytest.raises(StreamBroken):
                await resp.read()
            with pytest.raises(StreamConnectError):
                await client.post(f"http://127.0.0.1:{free_port()}", b"{}")
            await client.aclose()

    run(main())
