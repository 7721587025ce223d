"""TLS on either transport: fastws's own (compiled, OpenSSL from C) or the loop's (pure Python,
or a build without OpenSSL). What the SSLContext holds applies (client certificates, SNI
callback, ALPN, ciphers), get_extra_info answers, flow control holds, and bad TLS input
(plaintext, garbage, a stalled handshake, a missing or untrusted client certificate, a
peer that drops mid-record) costs one INFO line, no traceback, no descriptor."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
import ssl
import threading
from typing import Any

import pytest
import trustme

import fastws
from _wsutil import IO_TIMEOUT, build_frame, echo_handler, port_of, raw_server, scaled, until
from fastws import _accel


def server_context_for(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(context)
    return context


def client_context_for(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


def wss(server: fastws.Server, path: str = "/") -> str:
    return f"wss://127.0.0.1:{port_of(server)}{path}"


OWN = _accel.TLS_AVAILABLE  # the compiled path with OpenSSL: TLSTransport


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def echo_once(uri: str, context: ssl.SSLContext, message: str | bytes = "still serving", **options: Any) -> None:
    async with fastws.connect(uri, ssl=context, open_timeout=IO_TIMEOUT, **options) as ws:
        await ws.send(message)
        assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == message


# -- which transport, and what it tells ------------------------------------------------------


def test_tls_runs_on_own_transport_when_compiled(run: Any, ca: trustme.CA) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context_for(ca)) as server:
            async with fastws.connect(wss(server), ssl=client_context_for(ca)) as ws:
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "x"
                (conn,) = server.connections
                for transport in (ws.conn.transport, conn.transport):
                    assert (type(transport).__name__ == "TLSTransport") == OWN
                    sslobject = transport.get_extra_info("ssl_object")
                    assert isinstance(sslobject, (ssl.SSLObject, ssl.SSLSocket))
                    assert sslobject.version() in ("TLSv1.2", "TLSv1.3")
                    cipher = transport.get_extra_info("cipher")
                    assert cipher is not None and cipher[0] == sslobject.cipher()[0]
                    assert isinstance(transport.get_extra_info("sslcontext"), ssl.SSLContext)
                    assert transport.get_extra_info("peername") is not None
                peercert = ws.conn.transport.get_extra_info("peercert")
                assert ("DNS", "localhost") in peercert["subjectAltName"]
                assert conn.transport.get_extra_info("peercert") in (None, {})  # no client certificate asked

    run(main())


def test_sni_callback_is_called_and_can_switch_the_certificate(run: Any, ca: trustme.CA) -> None:
    calls: list[tuple[str, str | None]] = []
    other = server_context_for(ca, "other.test")

    def sni(sslobject: Any, name: str | None, context: ssl.SSLContext) -> None:
        calls.append((type(sslobject).__name__, name))
        if name == "other.test":
            sslobject.context = other

    async def main() -> None:
        context = server_context_for(ca)
        context.sni_callback = sni
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=context) as server:
            # Verified against other.test: only the certificate the callback switched to passes.
            async with fastws.connect(wss(server), ssl=client_context_for(ca), server_hostname="other.test") as ws:
                peercert = ws.conn.transport.get_extra_info("peercert")
                assert ("DNS", "other.test") in peercert["subjectAltName"]
            await echo_once(wss(server), client_context_for(ca), server_hostname="localhost")

    run(main())
    assert calls == [("SSLObject", "other.test"), ("SSLObject", "localhost")]


def test_alpn_and_ciphers_from_the_context_apply(run: Any, ca: trustme.CA) -> None:
    async def main() -> None:
        context = server_context_for(ca)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
        context.set_alpn_protocols(["x-fastws", "http/1.1"])
        client = client_context_for(ca)
        client.set_alpn_protocols(["http/1.1"])
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=context) as server:
            async with fastws.connect(wss(server), ssl=client) as ws:
                (conn,) = server.connections
                for transport in (ws.conn.transport, conn.transport):
                    name, version, _ = transport.get_extra_info("cipher")
                    assert version == "TLSv1.2" and "AES128-GCM" in name
                    assert transport.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"

    run(main())


# -- client certificates (mTLS) --------------------------------------------------------------


def mtls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = server_context_for(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(context)
    return context


def test_mtls_accepts_a_trusted_client_certificate(run: Any, ca: trustme.CA) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=mtls_server_context(ca)) as server:
            client = client_context_for(ca)
            ca.issue_cert("client@example.test").configure_cert(client)
            async with fastws.connect(wss(server), ssl=client) as ws:
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "hello"
                (conn,) = server.connections
                peercert = conn.transport.get_extra_info("peercert")
                assert ("email", "client@example.test") in peercert["subjectAltName"]

    run(main())


# -- bad TLS input: one INFO line naming the peer, no traceback, nothing leaked, still serving --


def check_quiet(caplog: pytest.LogCaptureFixture, peer_port: int, wanted: str) -> None:
    records = [r for r in caplog.records if r.name.startswith("fastws")]
    loud = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.WARNING]
    assert loud == [], "bad TLS input must not be logged at WARNING or above"
    assert [r.getMessage() for r in records if r.exc_info] == [], "bad TLS input must not be logged with a traceback"
    # The access log (fastws.access) has its own line for every connection that opened.
    diagnostics = [r for r in records if r.name != "fastws.access"]
    mentions = [r.getMessage() for r in diagnostics if f"127.0.0.1:{peer_port}" in r.getMessage()]
    assert len(mentions) == 1 and wanted in mentions[0], mentions


def play_bad_tls(run: Any, caplog: pytest.LogCaptureFixture, ca: trustme.CA, scenario: Any, wanted: str,
                 context: ssl.SSLContext | None = None, **options: Any) -> None:
    """``scenario(port)`` misbehaves against a TLS server and returns its own port."""
    good_client = client_context_for(ca)
    if context is not None and context.verify_mode == ssl.CERT_REQUIRED:
        ca.issue_cert("good@example.test").configure_cert(good_client)

    async def main() -> int:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=context or server_context_for(ca), **options) as server:
            await echo_once(wss(server), good_client)  # the loop's lazily made descriptors exist now
            await until(lambda: not server.connections, what="the first good client gone")
            baseline = open_fds()
            peer_port = await scenario(port_of(server))
            await until(lambda: not server._handshakes and not server.connections, what="the bad peer dropped")
            await until(lambda: open_fds() <= baseline, what="every descriptor of the bad peer closed")
            await echo_once(wss(server), good_client)  # the server still serves good clients
        return int(peer_port)

    with caplog.at_level(logging.DEBUG, logger="fastws"):
        peer_port = run(main())
    check_quiet(caplog, peer_port, wanted)


async def send_then_wait_for_close(port: int, data: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        await asyncio.wait_for(reader.read(), IO_TIMEOUT)  # whatever alert, then EOF
    except ConnectionResetError:
        pass
    peer_port = writer.get_extra_info("sockname")[1]
    writer.close()
    return int(peer_port)


def test_plaintext_http_to_the_tls_port(run: Any, caplog: pytest.LogCaptureFixture, ca: trustme.CA) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    play_bad_tls(run, caplog, ca, lambda port: send_then_wait_for_close(port, request), "TLS handshake failed")


def test_garbage_to_the_tls_port(run: Any, caplog: pytest.LogCaptureFixture, ca: trustme.CA) -> None:
    garbage = bytes(range(256)) * 8
    play_bad_tls(run, caplog, ca, lambda port: send_then_wait_for_close(port, garbage), "TLS handshake failed")


def test_stalled_handshake_is_bounded_by_the_open_timeout(run: Any, caplog: pytest.LogCaptureFixture, ca: trustme.CA) -> None:
    async def stall(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x02\x00")  # a record header, then nothing
        assert await asyncio.wait_for(reader.read(), IO_TIMEOUT) == b""  # closed by the server
        peer_port = writer.get_extra_info("sockname")[1]
        writer.close()
        return int(peer_port)

    play_bad_tls(run, caplog, ca, stall, "no complete handshake within", open_timeout=scaled(0.5))


def test_mtls_refuses_a_client_without_certificate(run: Any, caplog: pytest.LogCaptureFixture, ca: trustme.CA) -> None:
    async def no_certificate(port: int) -> int:
        return await refused_client(port, client_context_for(ca))

    play_bad_tls(run, caplog, ca, no_certificate, "TLS handshake failed", context=mtls_server_context(ca))


def test_mtls_refuses_an_untrusted_client_certificate(run: Any, caplog: pytest.LogCaptureFixture, ca: trustme.CA) -> None:
    async def untrusted(port: int) -> int:
        client = client_context_for(ca)
        trustme.CA().issue_cert("stranger@example.test").configure_cert(client)  # another CA's
        return await refused_client(port, client)

    play_bad_tls(run, caplog, ca, untrusted, "TLS handshake failed", context=mtls_server_context(ca))


async def refused_client(port: int, context: ssl.SSLContext) -> int:
    """A fastws client the server refuses: TLS 1.3 tells the client only when it reads."""
    sock = socket.create_connection(("127.0.0.1", port))
    peer_port = sock.getsockname()[1]
    with pytest.raises((ssl.SSLError, OSError, fastws.InvalidHandshake)):
        await fastws.connect(f"wss://127.0.0.1:{port}/", ssl=context, sock=sock, server_hostname="localhost",
                             open_timeout=IO_TIMEOUT)
    return int(peer_port)


class RawTLSClient:
    """A TLS client written with ssl.SSLObject over plain asyncio streams: it can send half a record."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sslobject: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.reader, self.writer, self.sslobject = reader, writer, sslobject
        self.incoming, self.outgoing = incoming, outgoing

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext) -> RawTLSClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = cls(reader, writer, context.wrap_bio(incoming, outgoing, server_hostname="localhost"), incoming, outgoing)
        while True:
            try:
                client.sslobject.do_handshake()
                break
            except ssl.SSLWantReadError:
                await client._exchange()
        writer.write(outgoing.read())
        return client

    async def _exchange(self) -> None:
        self.writer.write(self.outgoing.read())
        data = await asyncio.wait_for(self.reader.read(65536), IO_TIMEOUT)
        if not data:
            raise EOFError("the server closed")
        self.incoming.write(data)

    def encrypt(self, data: bytes) -> bytes:
        self.sslobject.write(data)
        return self.outgoing.read()

    async def read_until(self, marker: bytes) -> bytes:
        received = b""
        while marker not in received:
            try:
                received += self.sslobject.read(65536)
            except ssl.SSLWantReadError:
                await self._exchange()
        return received


def test_peer_that_drops_mid_record(run: Any, caplog: pytest.LogCaptureFixture, ca: trustme.CA) -> None:
    async def drop(port: int) -> int:
        client = await RawTLSClient.open(port, client_context_for(ca))
        client.writer.write(client.encrypt(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ))
        assert (await client.read_until(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        record = client.encrypt(build_frame(0x1, b"half of me arrives" * 100))
        client.writer.write(record[: len(record) // 2])
        await client.writer.drain()
        peer_port = client.writer.get_extra_info("sockname")[1]
        client.writer.transport.abort()
        return int(peer_port)

    play_bad_tls(run, caplog, ca, drop, "TLS connection lost without a closing handshake")


# -- flow control, close ---------------------------------------------------------------------


def test_flow_control_over_tls(run: Any, ca: trustme.CA) -> None:
    """A reader that stops holds the server back (pause_writing) and then gets every byte."""
    paused: list[bool] = []
    block = os.urandom(256 * 1024)

    class Flood(fastws.Listener):
        def on_connect(self, conn: fastws.Connection) -> None:
            for _ in range(32):
                conn.send(block)
            conn.close()

        def pause_writing(self, conn: fastws.Connection) -> None:
            paused.append(True)

    async def main() -> None:
        server = await fastws.create_server(Flood, "127.0.0.1", 0, ssl=server_context_for(ca), write_limit=65536,
                                            max_size=None)
        async with server:
            async with fastws.connect(wss(server), ssl=client_context_for(ca), max_size=None, max_queue=1) as ws:
                await asyncio.sleep(0)
                received = 0
                async for message in ws:
                    assert message == block
                    received += 1
                assert received == 32 and ws.close_code == 1000

    run(main())
    assert paused, "32 x 256 KiB into a 64 KiB write limit must pause the writer"


_speedups = importlib.import_module("fastws._speedups")  # the test command always builds it


@pytest.mark.skipif(not _speedups.TLS_AVAILABLE, reason="the extension was built without OpenSSL (FASTWS_OPENSSL=0)")
def test_writes_behind_records_the_socket_did_not_take(run: Any, ca: trustme.CA) -> None:
    """TLSTransport sends the records of a large write together and holds those the socket
    does not take; a writelines() behind them is queued whole and every byte arrives once, in
    order (a bytes buffer queued from an offset behind other items once lost the offset)."""
    server_context, client_context = server_context_for(ca), client_context_for(ca)
    first = os.urandom(200 * 1024)  # records into one batch; a 16 KiB socket buffer keeps most
    second = os.urandom(100 * 1024)
    expected = first + b"<" + second + b">" + b"tail"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        ours.setblocking(False)
        handshake: asyncio.Future[BaseException | None] = loop.create_future()
        sslobject = server_context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
        transport = _speedups.TLSTransport(loop, ours.detach(), {}, sslobject, server_context, handshake.set_result)
        transport.set_protocol(asyncio.Protocol())
        start_reading = threading.Event()

        def peer() -> bytes:
            with client_context.wrap_socket(theirs, server_hostname="localhost") as tls:
                tls.settimeout(IO_TIMEOUT)
                start_reading.wait(IO_TIMEOUT)
                received = bytearray()
                while len(received) < len(expected):
                    chunk = tls.recv(65536)
                    assert chunk, "the transport closed early"
                    received += chunk
                return bytes(received)

        reader = loop.run_in_executor(None, peer)
        try:
            assert await asyncio.wait_for(handshake, IO_TIMEOUT) is None
            transport.write(first)
            assert transport.get_write_buffer_size() > 0  # records held back: the peer is not reading
            transport.writelines([b"<", second, b">"])
            transport.write(b"tail")
        finally:
            start_reading.set()
        assert await asyncio.wait_for(reader, IO_TIMEOUT) == expected
        await until(lambda: transport.get_write_buffer_size() == 0, what="the queue drained")
        transport.abort()

    run(main())


def test_close_and_abort_over_tls(run: Any, ca: trustme.CA) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context_for(ca)) as server:
            ws = await fastws.connect(wss(server), ssl=client_context_for(ca))
            await ws.close(4000, "bye")
            assert ws.close_code == 4000
            await until(lambda: not server.connections, what="the server side closed")
            ws = await fastws.connect(wss(server), ssl=client_context_for(ca))
            await until(lambda: len(server.connections) == 1, what="the server side open")
            (conn,) = server.connections
            conn.abort()
            with pytest.raises(fastws.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
            assert ws.close_code == 1006

    run(main())


def test_many_small_messages_in_one_read(run: Any, ca: trustme.CA) -> None:
    """Several records per read and per parser call: a burst of small frames, all echoed in order."""

    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context_for(ca)) as server:
            async with fastws.connect(wss(server), ssl=client_context_for(ca)) as ws:
                for i in range(2000):
                    await ws.send(f"m{i}")
                for i in range(2000):
                    assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == f"m{i}"

    run(main())


def test_client_handshake_that_stalls_is_bounded_by_open_timeout(run: Any, ca: trustme.CA) -> None:
    """A server that accepts TCP and never answers the ClientHello: OpenTimeout, nothing left open."""

    async def silent(peer: Any) -> None:
        await peer.read_all_until_eof()  # the ClientHello, then the client giving up

    async def main() -> None:
        async with raw_server(silent) as port:
            await warm_up_loop()
            baseline = open_fds()
            with pytest.raises(fastws.OpenTimeout):
                await fastws.connect(f"wss://127.0.0.1:{port}/", ssl=client_context_for(ca), open_timeout=scaled(0.3))
            await until(lambda: open_fds() <= baseline, what="the client's descriptors closed")

    run(main())


async def warm_up_loop() -> None:
    """The loop's lazily made descriptors (resolver, self-pipe) exist before a baseline is taken."""
    await asyncio.get_running_loop().getaddrinfo("127.0.0.1", 0)
