"""Test helpers written independently of fastws: hand-built frames, a frame parser,
a raw asyncio client that speaks the wire protocol byte by byte, and echo servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fastws


def _timeout_factor() -> float:
    raw = os.environ.get("FASTWS_TEST_TIMEOUT_FACTOR", "").strip()
    try:
        factor = float(raw) if raw else 1.0
    except ValueError:
        factor = 0.0
    if not 0 < factor < float("inf"):
        raise ValueError(f"FASTWS_TEST_TIMEOUT_FACTOR must be a positive number, not {raw!r}")
    return factor


#: The one knob for every time bound of the tests (FASTWS_TEST_TIMEOUT_FACTOR,
#: default 1): a slow or busy machine (CI running other jobs alongside) sets 2 or 3.
#: Bounds scaled by it only detect hangs; what a test checks about timing itself
#: (a timer fired no earlier than its delay) stays unscaled.
TIMEOUT_FACTOR = _timeout_factor()


def scaled(seconds: float) -> float:
    """A bound that detects a hang, scaled by FASTWS_TEST_TIMEOUT_FACTOR."""
    return seconds * TIMEOUT_FACTOR


IO_TIMEOUT = scaled(10.0)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def xor_mask(data: bytes, key: bytes) -> bytes:
    """Reference masking: byte by byte."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def expected_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def build_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    key: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """A frame built by hand. ``rsv`` is the 3 RSV bits (0-7, RSV1 = 4);
    ``length`` overrides the declared payload length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4) if key is None else key
        return head + key + fast_mask(payload, key)
    return head + payload


def fast_mask(data: bytes, key: bytes) -> bytes:
    """Reference masking for large payloads (whole-number XOR, independent of fastws)."""
    n = len(data)
    if n == 0:
        return b""
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ k).to_bytes(n, "big")


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class Frame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    key: bytes
    payload: bytes  # unmasked

    @property
    def close_code(self) -> int | None:
        assert self.opcode == 8
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode()


def parse_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """Every complete frame in ``data`` and the bytes left over."""
    frames: list[Frame] = []
    pos = 0
    while True:
        if len(data) - pos < 2:
            break
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        hlen = 2
        if n == 126:
            hlen = 4
        elif n == 127:
            hlen = 10
        masked = bool(b1 & 0x80)
        if masked:
            hlen += 4
        if len(data) - pos < hlen:
            break
        if n == 126:
            n = struct.unpack("!H", data[pos + 2 : pos + 4])[0]
        elif n == 127:
            n = struct.unpack("!Q", data[pos + 2 : pos + 10])[0]
        if len(data) - pos - hlen < n:
            break
        key = data[pos + hlen - 4 : pos + hlen] if masked else b""
        payload = data[pos + hlen : pos + hlen + n]
        if masked:
            payload = fast_mask(payload, key)
        frames.append(Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, key, payload))
        pos += hlen + n
    return frames, data[pos:]


def upgrade_request(
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    method: str = "GET",
    version: str = "HTTP/1.1",
    key: str | None = RFC_KEY,
    ws_version: str | None = "13",
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    lines = [f"{method} {path} {version}", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if ws_version is not None:
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    lines += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class HttpHead:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


def parse_http_head(data: bytes) -> tuple[HttpHead, bytes]:
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"incomplete HTTP head: {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpHead(status, headers, b""), rest


class RawClient:
    """A WebSocket client on a plain asyncio stream: every byte is the test's choice."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""
        self.local_port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), IO_TIMEOUT)
        return cls(reader, writer)

    @classmethod
    async def connect(cls, port: int, path: str = "/", host: str = "127.0.0.1") -> RawClient:
        """Open and complete the opening handshake."""
        client = await cls.open(port, host)
        client.send(upgrade_request(path))
        head = await client.read_http_head()
        assert head.status == 101, head
        assert head.headers["sec-websocket-accept"] == expected_accept(RFC_KEY)
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read_more(self) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 16), IO_TIMEOUT)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        self.buffer += data
        return bool(data)

    async def read_http_head(self) -> HttpHead:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._read_more():
                raise EOFError(f"connection closed inside the HTTP head: {self.buffer!r}")
        head, self.buffer = parse_http_head(self.buffer)
        return head

    async def read_http_response(self) -> HttpHead:
        """A full response (head and Content-Length body)."""
        head = await self.read_http_head()
        length = int(head.headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not await self._read_more():
                break
        head.body, self.buffer = self.buffer[:length], self.buffer[length:]
        return head

    async def read_frame(self) -> Frame:
        while True:
            frames, _ = parse_frames(self.buffer)
            if frames:
                frame, self.buffer = parse_frames_one(self.buffer)
                return frame
            if not await self._read_more():
                raise EOFError(f"connection closed; unparsed bytes: {self.buffer[:100]!r}")

    async def read_all_until_eof(self) -> bytes:
        """Everything until the peer closes the TCP connection (bounded by IO_TIMEOUT per read)."""
        while await self._read_more():
            pass
        data, self.buffer = self.buffer, b""
        return data

    async def expect_close(self) -> Frame:
        """The next frame must be a close frame, then the TCP connection must end."""
        frame = await self.read_frame()
        assert frame.opcode == 8, frame
        assert not frame.masked, "a server must not mask its frames"
        rest = await self.read_all_until_eof()
        assert rest == b"", f"bytes after the close frame: {rest[:100]!r}"
        return frame

    def close(self) -> None:
        self.writer.close()


def parse_frames_one(data: bytes) -> tuple[Frame, bytes]:
    """The first frame of ``data`` and what follows it."""
    b1 = data[1]
    n = b1 & 0x7F
    hlen = 2 + (2 if n == 126 else 8 if n == 127 else 0) + (4 if b1 & 0x80 else 0)
    if n == 126:
        n = struct.unpack("!H", data[2:4])[0]
    elif n == 127:
        n = struct.unpack("!Q", data[2:10])[0]
    frames, _ = parse_frames(data[: hlen + n])
    return frames[0], data[hlen + n :]


async def echo_handler(ws: fastws.WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


async def until(predicate: Any, timeout: float = IO_TIMEOUT, what: str = "condition") -> None:
    """Poll a condition that has no event of its own, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.1f} s")
        await asyncio.sleep(0.005)


def port_of(server: fastws.Server) -> int:
    return server.sockets[0].getsockname()[1]


def uri_of(server: fastws.Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{port_of(server)}{path}"


@contextlib.asynccontextmanager
async def echo_server(**options: Any) -> AsyncIterator[fastws.Server]:
    async with fastws.serve(echo_handler, "127.0.0.1", 0, **options) as server:
        yield server


async def assert_echo(uri: str, message: str | bytes = "still serving") -> None:
    """A good client gets its message echoed back."""
    async with fastws.connect(uri, open_timeout=IO_TIMEOUT) as ws:
        await ws.send(message)
        assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == message


@contextlib.asynccontextmanager
async def raw_server(handle: Any) -> AsyncIterator[int]:
    """A TCP server on a free loopback port that runs ``handle(RawPeer)`` per connection; yields the port."""
    tasks: set[asyncio.Task[Any]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handle(RawClient(reader, writer))
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def accept_upgrade(peer: RawClient, extra: str = "") -> HttpHead:
    """Server side of the handshake, done by hand: read the request, answer 101."""
    while b"\r\n\r\n" not in peer.buffer:
        if not await peer._read_more():
            raise EOFError("client went away during the handshake")
    raw, _, peer.buffer = peer.buffer.partition(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    answer = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {expected_accept(headers['sec-websocket-key'])}\r\n{extra}\r\n"
    )
    peer.send(answer.encode())
    return HttpHead(101, headers, lines[0].encode())
