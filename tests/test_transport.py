"""The compiled path's SocketTransport, on a socket pair: what asyncio's transports promise.

Open connections run on it whenever the extension is built (see
``fastws.connection.take_over_transport``); the rest of the suite exercises it
through fastws, these tests pin the transport contract itself: ordering across
partial sends, flow control, EOF, resets, close and abort, errors raised by
the protocol. Like tests/test_differential.py they import the extension
directly, so they also run in the FASTWS_EXTENSION=0 pass.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
from typing import Any

import pytest

try:
    SocketTransport = importlib.import_module("fastws._speedups").SocketTransport
except ImportError as exc:  # pragma: no cover - the test command builds the extension
    raise ImportError("tests/test_transport.py needs the compiled extension fastws._speedups") from exc


class Recorder(asyncio.Protocol):
    """Collects what the transport tells its protocol."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.events: list[Any] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.got_data = asyncio.Event()
        self.resumed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got_data.set()

    def eof_received(self) -> None:
        self.events.append("eof")

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def make_pair(protocol: asyncio.BaseProtocol | None = None) -> tuple[Any, socket.socket, Any]:
    """A SocketTransport on one end of a socket pair, the plain socket at the other."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    protocol = protocol or Recorder()
    transport = SocketTransport(asyncio.get_running_loop(), ours.detach(), {"peername": "peer"})
    transport.set_protocol(protocol)
    transport.resume_reading()
    return transport, theirs, protocol


async def read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        assert chunk, "peer closed early"
        out += chunk
    return bytes(out)


def test_reads_and_writes(run: Any) -> None:
    async def main() -> None:
        transport, peer, proto = make_pair()
        assert transport.get_extra_info("peername") == "peer"
        assert transport.get_extra_info("nothing", 7) == 7
        await asyncio.get_running_loop().sock_sendall(peer, b"hello")
        await proto.got_data.wait()
        assert bytes(proto.data) == b"hello"
        transport.write(b"abc")
        transport.write(bytearray(b"def"))
        transport.writelines([b"g", memoryview(b"hi"), b""])
        assert await read_exactly(peer, 9) == b"abcdefghi"
        transport.close()
        assert transport.is_closing()
        assert await proto.lost is None
        assert await asyncio.get_running_loop().sock_recv(peer, 10) == b""  # the descriptor was closed
        peer.close()

    run(main())


def test_queue_keeps_order_and_copies_mutable_buffers(run: Any) -> None:
    """More than the socket takes: queued in order, flow control fires, a reused bytearray is not re-read."""

    async def main() -> None:
        transport, peer, proto = make_pair()
        transport.set_write_buffer_limits(high=64 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        expected = bytearray()
        scratch = bytearray(100_000)
        for i in range(40):
            block = bytes([i]) * 100_000
            if i % 2:
                scratch[:] = block
                transport.writelines([b"<", scratch])
                scratch[:] = b"x" * 100_000  # the caller reuses its buffer at once
            else:
                transport.write(b"<" + block)
            expected += b"<" + block
        assert transport.get_write_buffer_size() > 0
        assert proto.events == ["pause"]
        received = await read_exactly(peer, len(expected))
        assert received == expected
        await proto.resumed.wait()
        assert proto.events == ["pause", "resume"]
        assert transport.get_write_buffer_size() == 0
        transport.close()
        assert await proto.lost is None
        peer.close()

    run(main())


def test_close_sends_what_is_queued_first(run: Any) -> None:
    async def main() -> None:
        transport, peer, proto = make_pair()
        payload = os.urandom(4 * 1024 * 1024)
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        transport.write(b"more")  # still accepted while the queue drains
        assert not proto.lost.done()
        assert await read_exactly(peer, len(payload) + 4) == payload + b"more"
        assert await proto.lost is None
        peer.close()

    run(main())


def test_abort_drops_the_queue(run: Any) -> None:
    async def main() -> None:
        transport, peer, proto = make_pair()
        transport.write(b"x" * (8 * 1024 * 1024))
        transport.abort()
        transport.write(b"after abort")  # ignored
        assert await proto.lost is None
        loop = asyncio.get_running_loop()
        total = 0
        while chunk := await loop.sock_recv(peer, 1 << 20):
            total += len(chunk)
        assert total < 8 * 1024 * 1024
        peer.close()

    run(main())


def test_eof_closes(run: Any) -> None:
    async def main() -> None:
        transport, peer, proto = make_pair()
        peer.shutdown(socket.SHUT_WR)
        assert await proto.lost is None
        assert proto.events == ["eof"]
        assert transport.is_closing()
        peer.close()

    run(main())


def test_reset_reaches_connection_lost(run: Any) -> None:
    async def main() -> None:
        transport, peer, proto = make_pair()
        peer.close()  # the other end is gone: the next send fails with EPIPE
        transport.write(b"x" * 100)
        transport.write(b"y")
        assert isinstance(await proto.lost, (BrokenPipeError, ConnectionResetError))
        assert transport.is_closing()

    run(main())


def test_pause_reading_stops_delivery(run: Any) -> None:
    async def main() -> None:
        transport, peer, proto = make_pair()
        transport.pause_reading()
        assert not transport.is_reading()
        await asyncio.get_running_loop().sock_sendall(peer, b"held")
        for _ in range(3):
            await asyncio.sleep(0)  # loop passes in which the socket is readable
        assert proto.data == b""
        transport.resume_reading()
        assert transport.is_reading()
        await proto.got_data.wait()
        assert proto.data == b"held"
        transport.abort()
        await proto.lost
        peer.close()

    run(main())


def test_protocol_error_is_reported_and_closes(run: Any) -> None:
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            raise RuntimeError("boom")

    async def main() -> None:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        transport, peer, proto = make_pair(Failing())
        await asyncio.get_running_loop().sock_sendall(peer, b"x")
        exc = await proto.lost
        assert isinstance(exc, RuntimeError)
        assert [str(ctx["exception"]) for ctx in reported] == ["boom"]
        assert transport.is_closing()
        peer.close()

    run(main())


def test_bad_limits() -> None:
    async def main() -> None:
        transport, peer, _ = make_pair()
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=1, low=2)
        transport.abort()
        peer.close()

    asyncio.run(main())
