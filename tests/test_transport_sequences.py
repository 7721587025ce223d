"""Random sequences of writes and peer reads on the compiled path's transports.

SocketTransport and TLSTransport each keep a queue (bytes from an offset at its head,
copies of mutable buffers), flow control, and for TLS records that OpenSSL encrypted
but the socket did not take. A wrong offset or a lost copy shows only after a
particular mix of partial sends, so hypothesis makes the mixes: write() and
writelines() of bytes, bytearray and memoryview around the 16 KiB record size, with a
peer on small socket buffers that reads some, all or none in between. Whatever the
order, the peer gets every byte once and in order (and after close(), all of them before
the end, a TLS close_notify included), the transport's byte count never goes negative and
ends at 0, and pause_writing/resume_writing alternate.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import ssl
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, example, given, settings, strategies as st

from _wsutil import IO_TIMEOUT, until

_speedups = importlib.import_module("fastws._speedups")  # the test command always builds it

SIZES = st.sampled_from([0, 1, 300, 16383, 16384, 16385, 40_000, 150_000])
BUFFER = st.tuples(SIZES, st.sampled_from(["bytes", "bytearray", "memoryview"]))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.lists(BUFFER, min_size=1, max_size=1)),
        st.tuples(st.just("writelines"), st.lists(BUFFER, max_size=5)),
        st.tuples(st.just("read"), st.sampled_from([1, 5000, 70_000, 1 << 20])),
        st.tuples(st.just("turn"), st.just([])),  # one pass of the event loop: writable callbacks run
    ),
    min_size=1,
    max_size=25,
)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[str] = []

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


def small_socket_pair() -> tuple[socket.socket, socket.socket]:
    """Buffers of 16 KiB each way, so that a few writes fill them and partial sends happen."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


class PlainPeer:
    """The other end of the socket pair: reads when told to, keeps what it got."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()

    def take(self, data: bytes) -> None:
        self.received += data

    def read_now(self, limit: int) -> None:
        """What the socket holds now, up to ``limit`` bytes."""
        try:
            self.take(self.sock.recv(limit))
        except BlockingIOError:
            pass

    async def read_until(self, total: int) -> None:
        loop = asyncio.get_running_loop()
        while len(self.received) < total:
            data = await loop.sock_recv(self.sock, 1 << 20)
            assert data, "the transport closed early"
            self.take(data)

    async def read_to_eof(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(self.sock, 1 << 20):
            self.take(data)


class TLSPeer(PlainPeer):
    """A TLS client on memory BIOs over the non-blocking socket: reads what has arrived, decrypts what is whole."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        super().__init__(sock)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.close_notify = False

    async def handshake(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await loop.sock_sendall(self.sock, self.outgoing.read())
                data = await loop.sock_recv(self.sock, 65536)
                assert data, "the transport closed during the handshake"
                self.incoming.write(data)
        await loop.sock_sendall(self.sock, self.outgoing.read())

    def take(self, data: bytes) -> None:
        """Raw bytes from the socket: into OpenSSL; whole records come out in ``received``."""
        self.incoming.write(data)
        try:
            while chunk := self.tls.read(1 << 20):
                self.received += chunk
            self.close_notify = True  # read() answers b"" only after the peer's close_notify
        except ssl.SSLWantReadError:
            pass


async def play(transport: Any, peer: PlainPeer, protocol: Recorder, ops: list[tuple[str, list[Any]]], close: bool) -> None:
    """``ops``, then (``close``) close() at once, or wait for the queue to drain and abort()."""
    expected = bytearray()
    for op, arg in ops:
        if op in ("write", "writelines"):
            buffers: list[Any] = []
            for size, kind in arg:
                data = os.urandom(size)
                expected += data
                buffers.append(bytearray(data) if kind == "bytearray" else memoryview(data) if kind == "memoryview" else data)
            if op == "write":
                transport.write(buffers[0])
            else:
                transport.writelines(buffers)
            for buf in buffers:
                if isinstance(buf, bytearray):
                    buf[:] = b"x" * len(buf)  # the caller reuses its buffer: the transport kept a copy
        elif op == "read":
            peer.read_now(arg)
        else:
            await asyncio.sleep(0)
        assert transport.get_write_buffer_size() >= 0
    if close:  # what is queued (and TLS records held back) goes first, then the end
        transport.close()
        await asyncio.wait_for(peer.read_to_eof(), IO_TIMEOUT)
        assert len(peer.received) == len(expected) and peer.received == expected, (len(peer.received), len(expected))
        assert not isinstance(peer, TLSPeer) or peer.close_notify, "TLS ended without close_notify"
    else:
        await asyncio.wait_for(peer.read_until(len(expected)), IO_TIMEOUT)
    assert len(peer.received) == len(expected) and peer.received == expected
    await until(lambda: transport.get_write_buffer_size() == 0, what="the queue drained")
    pairs, odd = divmod(len(protocol.events), 2)  # a close() may end it paused
    assert protocol.events == ["pause", "resume"] * pairs + ["pause"] * odd, protocol.events
    transport.abort()


@SETTINGS
@given(ops=OPS, close=st.booleans())
def test_socket_transport_delivers_every_byte_in_order(run: Any, ops: list[tuple[str, list[Any]]], close: bool) -> None:
    async def main() -> None:
        ours, theirs = small_socket_pair()
        protocol = Recorder()
        transport = _speedups.SocketTransport(asyncio.get_running_loop(), ours.detach(), {})
        transport.set_protocol(protocol)
        transport.set_write_buffer_limits(high=64 * 1024)
        try:
            await play(transport, PlainPeer(theirs), protocol, ops, close)
        finally:
            theirs.close()

    run(main())


@pytest.mark.skipif(not _speedups.TLS_AVAILABLE, reason="the extension was built without OpenSSL (FASTWS_OPENSSL=0)")
@SETTINGS
@given(ops=OPS, close=st.booleans())
# Found by this test: close() behind a backlog sent close_notify into a full socket, lost it
# and closed the descriptor (the peer saw a truncated connection).
@example(ops=[("write", [(16383, "bytes")])] * 3 + [("write", [(40000, "bytes")])] * 2, close=True)
def test_tls_transport_delivers_every_byte_in_order(run: Any, ca: trustme.CA, ops: list[tuple[str, list[Any]]], close: bool) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client_context)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = small_socket_pair()
        protocol = Recorder()
        handshake: asyncio.Future[BaseException | None] = loop.create_future()
        sslobject = server_context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
        transport = _speedups.TLSTransport(loop, ours.detach(), {}, sslobject, server_context, handshake.set_result)
        transport.set_protocol(protocol)
        transport.set_write_buffer_limits(high=64 * 1024)
        peer = TLSPeer(theirs, client_context)
        try:
            await asyncio.wait_for(peer.handshake(), IO_TIMEOUT)
            assert await asyncio.wait_for(handshake, IO_TIMEOUT) is None
            await play(transport, peer, protocol, ops, close)
        finally:
            theirs.close()

    run(main())
