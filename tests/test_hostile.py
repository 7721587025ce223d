"""Hostile peers: floods from a peer that never reads, resets with data in flight.

The rule under test (README, "Backpressure"): what a connection writes on the
peer's behalf cannot pile up. While the write buffer is over its high-water
mark, pongs wait (only the latest ping is answered, RFC 6455 5.5.3) and a
``Listener``'s connection stops reading, so the replies of its callbacks stop
too; the ``WebSocket`` API's ``send`` waits instead.

The hostile peers are blocking sockets driven from worker threads, with small
kernel buffers on both ends (accepted sockets inherit the listening socket's)
so that the server's own write buffer is what fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import selectors
import socket
import struct
import time
import tracemalloc
from typing import Any

import pytest

import fastws
from _wsutil import echo_handler, expected_accept, parse_frames, scaled, until, upgrade_request
from fastws.apps import EchoListener

WRITE_LIMIT = 2**16
KERNEL_BUFFER = 16384
# What a connection may hold beyond its write limit: one read of the event loop
# (at most 256 KiB) parsed after the pause, and the parser's own buffers.
SLACK = 2**20
STALL = 0.5  # a send blocked this long: time to ask whether the peer has stopped reading (a poll, not a bound)
DEADLINE = scaled(30.0)


def small_buffers(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)
    return sock


def listening_socket() -> socket.socket:
    sock = small_buffers(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    return sock


def frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    """A frame with an all-zero mask key when ``masked`` (the payload goes as is): fast to build in bulk."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (
        bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + struct.pack("!H", n) if n < 65536 else bytes([0xFF]) + struct.pack("!Q", n)
    )
    if not masked:
        return head[:1] + bytes([head[1] & 0x7F]) + head[2:] + payload
    return head + b"\0\0\0\0" + payload


def ping_flood(count: int, masked: bool) -> bytes:
    """``count`` pings whose payloads are their 8-byte sequence numbers."""
    head = frame(9, bytes(8), masked)[:-8]
    return b"".join(head + i.to_bytes(8, "big") for i in range(count))


class Peer:
    """One end of a connection as a blocking socket, driven step by step from a thread."""

    def __init__(self, sock: socket.socket, masked: bool) -> None:
        self.sock = sock
        self.masked = masked
        self.received = b""

    def client_handshake(self) -> None:
        self.sock.sendall(upgrade_request())
        _, self.received = self._read_head()

    def server_handshake(self) -> None:
        head, _ = self._read_head()
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
        self.sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + expected_accept(key.decode()).encode() + b"\r\n\r\n"
        )
        self.received = b""

    def _read_head(self) -> tuple[bytes, bytes]:
        self.sock.settimeout(DEADLINE)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed during the handshake"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def send_without_reading(self, data: bytes, peer_stopped_reading: Any = lambda: False) -> int:
        """Send ``data`` until done, or until a send blocks and ``peer_stopped_reading()``
        says why (a blocked send alone may be a busy machine); returns what was sent."""
        self.sock.settimeout(STALL)
        view = memoryview(data)
        sent = 0
        deadline = time.monotonic() + DEADLINE
        while sent < len(data):
            assert time.monotonic() < deadline, f"flood not sent in time: {sent} of {len(data)} bytes"
            try:
                sent += self.sock.send(view[sent : sent + 65536])
            except TimeoutError:
                if peer_stopped_reading():
                    break
        return sent

    def exchange(self, data: bytes, done: Any) -> list[Any]:
        """Send ``data`` while reading frames, until ``done(frames)``; returns the frames."""
        self.sock.setblocking(False)
        frames: list[Any] = []
        pending, self.received = self.received, b""
        view = memoryview(data)
        sent = 0
        deadline = time.monotonic() + DEADLINE
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while not done(frames):
                assert time.monotonic() < deadline, f"no answer in time: {len(frames)} frames, {sent} of {len(data)} bytes sent"
                if sent == len(data):
                    selector.modify(self.sock, selectors.EVENT_READ)
                for _, events in selector.select(1.0):
                    if events & selectors.EVENT_WRITE and sent < len(data):
                        sent += self.sock.send(view[sent : sent + 65536])
                    if events & selectors.EVENT_READ:
                        chunk = self.sock.recv(1 << 20)
                        assert chunk, "connection closed"
                        new, pending = parse_frames(pending + chunk)
                        frames += new
        return frames


async def connect_peer(listening: socket.socket, server: Any) -> tuple[Peer, Any]:
    """A masked raw client with small buffers, through the handshake, and the server's side of it."""
    peer = Peer(small_buffers(socket.socket()), masked=True)
    peer.sock.connect(listening.getsockname())
    await asyncio.to_thread(peer.client_handshake)
    await until(lambda: bool(server.connections), DEADLINE)
    return peer, next(iter(server.connections))


def last_pong(frames: list[Any]) -> int | None:
    pongs = [f for f in frames if f.opcode == 10]
    return int.from_bytes(pongs[-1].payload, "big") if pongs else None


async def traced_peak(step: Any) -> int:
    """Peak of Python allocations above the level before ``step`` ran."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await step
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


SERVER_APPS = {"websocket": (fastws.serve, echo_handler), "listener": (fastws.create_server, EchoListener)}


@pytest.mark.parametrize("app", SERVER_APPS)
def test_ping_flood_from_a_client_that_never_reads(run: Any, app: str) -> None:
    """150,000 pings, none of the pongs read: the server holds its write limit and little more,
    then answers the latest ping once the client reads, and still echoes."""
    count = 150_000
    flood = ping_flood(count, masked=True)
    start, factory = SERVER_APPS[app]

    async def main() -> None:
        listening = listening_socket()
        async with await start(factory, sock=listening, ping_interval=None, write_limit=WRITE_LIMIT) as server:
            peer, conn = await connect_peer(listening, server)
            sent = 0

            async def flood_phase() -> None:
                nonlocal sent
                # The WebSocket API keeps reading (pongs coalesce); a Listener stops.
                stopped = (lambda: not conn.transport.is_reading()) if app == "listener" else (lambda: False)
                sent = await asyncio.to_thread(peer.send_without_reading, flood, stopped)

            peak = await traced_peak(flood_phase())
            assert conn.writing_paused, "the server's write buffer never filled: the test proves nothing"
            held = conn.transport.get_write_buffer_size()
            assert held <= WRITE_LIMIT + 1024, held
            assert peak < WRITE_LIMIT + SLACK, f"server grew by {peak} B under a ping flood"
            if app == "listener":
                assert not conn.transport.is_reading()

            rest = flood[sent:] + frame(1, b"after the flood", masked=True)
            frames = await asyncio.to_thread(
                peer.exchange, rest, lambda fs: last_pong(fs) == count - 1 and any(f.opcode == 1 for f in fs)
            )
            assert [f.payload for f in frames if f.opcode == 1] == [b"after the flood"]
            pongs = [int.from_bytes(f.payload, "big") for f in frames if f.opcode == 10]
            assert pongs == sorted(pongs) and len(pongs) < count  # in order, coalesced
            assert conn.state == fastws.connection.OPEN
            peer.sock.close()

    run(main(), timeout=120)


def test_ping_flood_from_a_server_to_a_client_that_never_reads(run: Any) -> None:
    """A hostile server floods a fastws client with pings and reads none of the pongs."""
    count = 150_000
    flood = ping_flood(count, masked=False)

    async def main() -> None:
        listening = listening_socket()
        sock = small_buffers(socket.socket())
        sock.connect(listening.getsockname())
        accepted, _ = await asyncio.to_thread(listening.accept)
        peer = Peer(accepted, masked=False)
        handshake = asyncio.ensure_future(asyncio.to_thread(peer.server_handshake))
        ws = await fastws.connect("ws://127.0.0.1/", sock=sock, ping_interval=None, write_limit=WRITE_LIMIT)
        await handshake
        sent = 0

        async def flood_phase() -> None:
            nonlocal sent
            sent = await asyncio.to_thread(peer.send_without_reading, flood)

        peak = await traced_peak(flood_phase())
        assert ws.conn.writing_paused, "the client's write buffer never filled: the test proves nothing"
        assert ws.conn.transport.get_write_buffer_size() <= WRITE_LIMIT + 1024
        assert peak < WRITE_LIMIT + SLACK, f"client grew by {peak} B under a ping flood"
        frames = await asyncio.to_thread(peer.exchange, flood[sent:], lambda fs: last_pong(fs) == count - 1)
        pongs = [int.from_bytes(f.payload, "big") for f in frames if f.opcode == 10]
        assert pongs == sorted(pongs) and len(pongs) < count
        assert all(f.masked for f in frames)
        ws.conn.abort()
        accepted.close()
        listening.close()

    run(main(), timeout=120)


def test_echo_app_stops_reading_from_a_client_that_never_reads(run: Any) -> None:
    """`fastws serve`'s echo app: 200 messages of 64 KiB from a client that reads nothing.

    The server stops reading once its write buffer is full (TCP holds the rest
    back) instead of queueing every echo; then every echo arrives, in order."""
    size, count = 2**16, 200
    messages = [i.to_bytes(4, "big") * (size // 4) for i in range(count)]
    data = b"".join(frame(2, m, masked=True) for m in messages)

    async def main() -> None:
        listening = listening_socket()
        async with await fastws.create_server(EchoListener, sock=listening, ping_interval=None, write_limit=WRITE_LIMIT) as server:
            peer, conn = await connect_peer(listening, server)
            sent = 0

            async def flood_phase() -> None:
                nonlocal sent
                sent = await asyncio.to_thread(peer.send_without_reading, data, lambda: not conn.transport.is_reading())

            peak = await traced_peak(flood_phase())
            assert sent < len(data), "the server read everything: it never stopped"
            assert conn.writing_paused and not conn.transport.is_reading()
            assert conn.transport.get_write_buffer_size() <= WRITE_LIMIT + SLACK
            assert peak < WRITE_LIMIT + 2 * SLACK, f"server grew by {peak} B"
            frames = await asyncio.to_thread(peer.exchange, data[sent:], lambda fs: len(fs) >= count)
            assert [f.payload for f in frames] == messages
            peer.sock.close()

    run(main(), timeout=120)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_peers_that_reset_with_data_in_flight_leave_nothing_open(run: Any) -> None:
    """200 peers send half a frame and reset at once; keepalive is off, so
    nothing but the reset itself can close their connections."""
    peers = 200
    half_frame = frame(2, bytes(1000), masked=True)[:500]

    def connect_all(port: int) -> list[socket.socket]:
        socks = []
        for _ in range(peers):
            sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            peer = Peer(sock, masked=True)
            peer.client_handshake()
            socks.append(sock)
        return socks

    def reset_all(socks: list[socket.socket]) -> None:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.send(half_frame)
            sock.close()

    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ping_interval=None) as server:
            port = server.sockets[0].getsockname()[1]
            baseline = open_fds()
            socks = await asyncio.to_thread(connect_all, port)
            await until(lambda: len(server.connections) == peers, DEADLINE)
            await asyncio.to_thread(reset_all, socks)
            await until(lambda: not server.connections, DEADLINE)
            await until(lambda: open_fds() <= baseline, DEADLINE)

    run(main(), timeout=120)


def flood_listener_echo(messages: list[bytes], **server_options: Any) -> Any:
    """Start `fastws serve`'s echo app and a peer that floods it without reading until it stops reading."""

    async def start() -> tuple[Any, Peer, Any, int, bytes]:
        listening = listening_socket()
        server = await fastws.create_server(EchoListener, sock=listening, write_limit=WRITE_LIMIT, **server_options)
        peer, conn = await connect_peer(listening, server)
        data = b"".join(frame(2, m, masked=True) for m in messages)
        sent = await asyncio.to_thread(peer.send_without_reading, data, lambda: not conn.transport.is_reading())
        assert sent < len(data) and conn.writing_paused
        return server, peer, conn, sent, data

    return start()


def test_keepalive_takes_a_slow_reader_draining_our_output_as_alive(run: Any) -> None:
    """While the echo app holds reading back, the peer's silence is the server's doing:
    keepalive must not close a peer that keeps taking output, however slowly."""
    messages = [i.to_bytes(4, "big") * 4096 for i in range(200)]

    async def main() -> None:
        # The ping timeout is a time bound (a starved test thread drains nothing while it
        # waits for a CPU), so it is scaled; the reading lasts four of them.
        timeout = scaled(1.5)
        server, peer, conn, sent, data = await flood_listener_echo(messages, ping_interval=1.5, ping_timeout=timeout)
        async with server:

            def read_slowly(seconds: float) -> int:
                """About 32 KiB/s in, and more messages out whenever the server takes them: the
                server's buffer takes several ping timeouts to fall to its low-water mark each
                time (its reading stays held), but some of it goes out in every one."""
                rest = memoryview(data)[sent:]
                more = 0
                peer.sock.setblocking(False)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    if select.select([peer.sock], [], [], DEADLINE)[0]:
                        peer.received += peer.sock.recv(2048)
                    with contextlib.suppress(BlockingIOError):
                        more += peer.sock.send(rest[more : more + 65536])
                    time.sleep(0.0625)  # the peer's own pace, not synchronisation
                return more

            sent += await asyncio.to_thread(read_slowly, 4 * timeout)
            assert conn.state == fastws.connection.OPEN, (conn.close_code, conn.close_reason)
            frames = await asyncio.to_thread(
                peer.exchange, data[sent:], lambda fs: sum(f.opcode == 2 for f in fs) >= len(messages)
            )
            assert [f.payload for f in frames if f.opcode == 2] == messages
            peer.sock.close()

    run(main(), timeout=120)


def test_keepalive_still_closes_a_peer_that_takes_nothing(run: Any) -> None:
    """The same flood, then nothing: no data and none of the output taken: 1011, and the connection goes."""
    messages = [bytes(65536)] * 100

    async def main() -> None:
        server, peer, conn, _, _ = await flood_listener_echo(messages, ping_interval=0.2, ping_timeout=0.2, close_timeout=0.5)
        async with server:
            await until(lambda: not server.connections, DEADLINE)
            assert conn.state == fastws.connection.CLOSED
            assert conn.close_code == 1011 and "keepalive" in conn.close_reason
            peer.sock.close()

    run(main(), timeout=120)
