#!/usr/bin/env python3
"""Soak test: ``fastws serve`` (echo) under thousands of connections, hostile peers included.

One server process (``fastws serve echo --workers 1``, compiled path unless
``--pure``) on a free loopback port; one or two load processes drive a mix of

- good clients: random messages (16 B .. 64 KiB, text and binary, some
  fragmented), every echo verified byte for byte and in order;
- slow readers: small SO_RCVBUF, keep sending while they stop reading for
  seconds at a time, then read again; their echoes are verified too;
- resetters: connect, leave a half request / half frame / data in flight, and
  reset (SO_LINGER 0 + close), over and over;
- ping flooders: masked pings as fast as the socket takes them, never reading,
  for a while, then reset.

Every ``--interval`` seconds the server's RSS and open descriptors are sampled.
The run fails (exit 1) if RSS or descriptors do not level off, if the
descriptors do not return to the idle baseline once every client is gone, or
if a good client loses or gets a corrupted message. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import queue
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
from run import git_commit  # noqa: E402  (bench/run.py: HEAD, -dirty outside bench/results)

RESULTS = os.path.join(BENCH, "results")
MiB = 1024 * 1024
ROLES = ("good", "slow", "reset", "ping")
DEFAULT_MIX = "good:85,slow:5,reset:8,ping:2"


def log(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------ frames (client side)
# A deliberately small, independent helper: client frames are masked, server
# frames must not be.

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def upgrade_request(port, key):
    return ("GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key)).encode()


def mask(data, key):
    n = len(data)
    if n == 0:
        return b""
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ k).to_bytes(n, "big")


def client_frame(opcode, payload, fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + mask(payload, key)


def parse_server_frames(buf):
    """Complete frames at the start of ``buf`` (a bytearray, consumed in place):
    a list of (fin, opcode, payload). ValueError for a masked frame or RSV bits."""
    out = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        if b1 & 0x80:
            raise ValueError("server frame is masked")
        if b0 & 0x70:
            raise ValueError("server frame has RSV bits 0x%02x" % (b0 & 0x70))
        n = b1 & 0x7F
        h = 2
        if n == 126:
            if end - pos < 4:
                break
            n = struct.unpack_from("!H", buf, pos + 2)[0]
            h = 4
        elif n == 127:
            if end - pos < 10:
                break
            n = struct.unpack_from("!Q", buf, pos + 2)[0]
            h = 10
        if end - pos < h + n:
            break
        out.append((bool(b0 & 0x80), b0 & 0x0F, bytes(buf[pos + h:pos + h + n])))
        pos += h + n
    if pos:
        del buf[:pos]
    return out


def text_pool(rng, chars):
    """Valid UTF-8 mixing 1-, 2-, 3- and 4-byte characters (no surrogates)."""
    ranges = ((0x20, 0x7E), (0xA0, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF))
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(chars)).encode()


# ------------------------------------------------------------------ load process


class Ctx:
    """What the clients of one load process share: config, payload pools, counters."""

    def __init__(self, cfg, idx):
        self.cfg = cfg
        self.idx = idx
        self.rng = random.Random(cfg["seed"] * 1000 + idx)
        self.port = cfg["port"]
        self.addr = ("127.0.0.1", self.port)
        self.bin_pool = self.rng.randbytes(1 * MiB)
        self.txt_pool = text_pool(self.rng, 300_000)
        self.c = collections.Counter()          # cumulative counters
        self.open = collections.Counter()       # open connections by role
        self.lat = collections.Counter()        # good-client echo latency histogram (log buckets)
        self.errors = []
        self.stopping = False
        self.stop_fut = None
        self.protos = set()
        self.socks = set()

    def error(self, kind, msg):
        self.c[kind] += 1
        if len(self.errors) < 50:
            self.errors.append("[load %d] %s" % (self.idx, msg))

    def snapshot(self):
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"counters": dict(self.c), "open": dict(self.open), "lat": dict(self.lat),
                "errors": list(self.errors), "cpu_s": ru.ru_utime + ru.ru_stime}

    async def sleep(self, seconds):
        """Sleep, or less if the run is stopping. True if stopping."""
        if not self.stopping and seconds > 0:
            try:
                await asyncio.wait_for(asyncio.shield(self.stop_fut), seconds)
            except TimeoutError:
                pass
        return self.stopping

    def message_size(self, lo=16, hi=65536):
        r = self.rng.random()
        if r < 0.04:
            return self.rng.choice((125, 126, 127, 65535, 65536))
        return int(lo * (hi / lo) ** self.rng.random())

    def payload(self, cid, seq, size, text):
        if text:
            pool = self.txt_pool
            head = b"%d/%d;" % (cid, seq)
            n = max(size - len(head), 0)
            start = self.rng.randrange(len(pool) - n)
            while pool[start] & 0xC0 == 0x80:
                start += 1
            end = start + n
            while end < len(pool) and pool[end] & 0xC0 == 0x80:
                end -= 1
            return head + pool[start:end]
        head = struct.pack("!II", cid, seq)
        n = max(size - 8, 0)
        start = self.rng.randrange(len(self.bin_pool) - n)
        return head + self.bin_pool[start:start + n]

    def socket(self, rcvbuf=None, linger0=False):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if linger0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return sock

    async def connect(self, role, cid, rcvbuf=None):
        loop = asyncio.get_running_loop()
        sock = self.socket(rcvbuf)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, self.addr), self.cfg["io_timeout"])
            _, proto = await loop.create_connection(lambda: Client(self, role, cid), sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            if not await asyncio.wait_for(asyncio.shield(proto.opened), self.cfg["io_timeout"]):
                raise ConnectionError("closed during the handshake")
        except BaseException:
            proto.abort()
            raise
        return proto

    async def raw_connect(self, rcvbuf=None):
        """A raw non-blocking socket with SO_LINGER 0 (close = reset), handshake done."""
        loop = asyncio.get_running_loop()
        sock = self.socket(rcvbuf, linger0=True)
        self.socks.add(sock)
        await asyncio.wait_for(loop.sock_connect(sock, self.addr), self.cfg["io_timeout"])
        return sock

    async def raw_handshake(self, sock, key):
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, upgrade_request(self.port, key))
        data = b""
        deadline = time.monotonic() + self.cfg["io_timeout"]
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), max(deadline - time.monotonic(), 0.01))
            if not chunk:
                raise ConnectionError("EOF during the handshake")
            data += chunk
        if not data.startswith(b"HTTP/1.1 101"):
            raise ConnectionError("handshake answered %r" % data[:40])
        return data.partition(b"\r\n\r\n")[2]

    def reset(self, sock):
        self.socks.discard(sock)
        sock.close()  # SO_LINGER 0: RST


class Client(asyncio.Protocol):
    """A WebSocket client connection that verifies every echo in order."""

    def __init__(self, ctx, role, cid):
        self.ctx = ctx
        self.role = role
        self.cid = cid
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.opened = loop.create_future()
        self.lost = loop.create_future()
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.transport = None
        self.handshaking = True
        self.buf = bytearray()
        self.expected = collections.deque()   # (is_text, payload, time sent)
        self.outstanding = 0                   # bytes sent, echo not yet verified
        self.frag_op = None
        self.frags = []
        self.seq = 0
        self.sent_close = False
        self.got_close = None                  # close code from the server
        self.failed = False                    # corruption / protocol error seen
        self.waiter = None
        self.write_paused = False
        self.write_waiter = None
        self.was_open = False

    # -- asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        self.ctx.protos.add(self)
        transport.write(upgrade_request(self.ctx.port, self.key))

    def data_received(self, data):
        self.buf += data
        if self.handshaking:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(self.buf) > 8192:
                    self._fail("handshake", "no end of the HTTP head in 8 KiB")
                return
            head = bytes(self.buf[:i]).decode("latin-1")
            del self.buf[:i + 4]
            lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            if not lines[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != accept_for(self.key):
                self._fail("handshake", "bad handshake answer: %r" % lines[0])
                return
            self.handshaking = False
            self.was_open = True
            self.ctx.open[self.role] += 1
            self.opened.set_result(True)
        try:
            frames = parse_server_frames(self.buf)
        except ValueError as exc:
            self._fail("corrupt", "protocol: %s" % exc)
            return
        for fin, op, payload in frames:
            self._frame(fin, op, payload)

    def connection_lost(self, exc):
        self.ctx.protos.discard(self)
        if self.was_open:
            self.ctx.open[self.role] -= 1
        if not self.opened.done():
            self.opened.set_result(False)  # (a result, not an exception nobody may retrieve)
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()
        if self.write_waiter is not None and not self.write_waiter.done():
            self.write_waiter.set_result(None)

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        if self.write_waiter is not None and not self.write_waiter.done():
            self.write_waiter.set_result(None)

    # -- frames in
    def _frame(self, fin, op, payload):
        if op == OP_PING:
            if not self.sent_close:
                self.transport.write(client_frame(OP_PONG, payload))
            return
        if op == OP_PONG:
            return
        if op == OP_CLOSE:
            self.got_close = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.sent_close:
                self.sent_close = True
                self.transport.write(client_frame(OP_CLOSE, payload[:2]))
            self._wake()
            return
        if op in (OP_TEXT, OP_BINARY):
            if self.frag_op is not None:
                self._fail("corrupt", "new data frame inside a fragmented message")
                return
            if fin:
                self._message(op == OP_TEXT, payload)
            else:
                self.frag_op, self.frags = op, [payload]
            return
        if op == OP_CONT:
            if self.frag_op is None:
                self._fail("corrupt", "continuation frame without a message")
                return
            self.frags.append(payload)
            if fin:
                op, self.frag_op = self.frag_op, None
                self._message(op == OP_TEXT, b"".join(self.frags))
                self.frags = []
            return
        self._fail("corrupt", "unknown opcode %d" % op)

    def _message(self, is_text, payload):
        c = self.ctx.c
        if not self.expected:
            self._fail("corrupt", "unexpected message (%d bytes) with nothing outstanding" % len(payload))
            return
        exp_text, exp, t_sent = self.expected.popleft()
        self.outstanding -= len(exp)
        if exp_text != is_text or exp != payload:
            where = next((i for i, (a, b) in enumerate(zip(exp, payload, strict=False)) if a != b), min(len(exp), len(payload)))
            self._fail("corrupt", "echo differs: expected %s %d bytes, got %s %d bytes, first difference at %d"
                       % ("text" if exp_text else "binary", len(exp), "text" if is_text else "binary", len(payload), where))
            return
        c[self.role + "_verified"] += 1
        c[self.role + "_bytes"] += len(payload)
        if self.role == "good":
            lat = time.monotonic() - t_sent
            self.ctx.lat[int(math.log(max(lat, 1e-5) * 1e6, 1.2))] += 1
        if not self.expected:
            self._wake()

    def _fail(self, kind, msg):
        if self.failed:
            return
        self.failed = True
        self.ctx.error(self.role + "_" + kind, "%s#%d: %s" % (self.role, self.cid, msg))
        self.abort()
        self._wake()

    def _wake(self):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- actions
    @property
    def alive(self):
        return not self.lost.done() and not self.failed and self.got_close is None

    def send_message(self, size=None, text=None, fragment_p=0.1):
        ctx = self.ctx
        rng = ctx.rng
        if size is None:
            size = ctx.message_size()
        if text is None:
            text = rng.random() < 0.5
        self.seq += 1
        payload = ctx.payload(self.cid, self.seq, size, text)
        op = OP_TEXT if text else OP_BINARY
        if len(payload) > 2 and rng.random() < fragment_p:
            cuts = sorted(rng.sample(range(1, len(payload)), min(rng.randint(1, 2), len(payload) - 1)))
            parts = [payload[a:b] for a, b in zip([0] + cuts, cuts + [len(payload)], strict=True)]
            data = b"".join(client_frame(op if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1))
                            for i, p in enumerate(parts))
        else:
            data = client_frame(op, payload)
        self.expected.append((text, payload, time.monotonic()))
        self.outstanding += len(payload)
        ctx.c[self.role + "_sent"] += 1
        self.transport.write(data)
        return len(payload)

    async def wait_echoes(self, timeout):
        """Until nothing is outstanding, the connection ends, or ``timeout``; True if all came back."""
        deadline = time.monotonic() + timeout
        while self.expected and self.alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self.waiter, remaining)
            except TimeoutError:
                pass
        return not self.expected

    async def wait_writable(self, timeout):
        if self.write_paused and not self.lost.done():
            self.write_waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self.write_waiter, timeout)
            except TimeoutError:
                pass
        return not self.write_paused

    async def close(self, timeout):
        """Closing handshake; abort if the server does not end TCP within ``timeout``. True if clean."""
        if not self.lost.done():
            if not self.sent_close:
                self.sent_close = True
                self.transport.resume_reading()
                self.transport.write(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
            try:
                await asyncio.wait_for(asyncio.shield(self.lost), timeout)
            except TimeoutError:
                self.abort()
                return False
        return True

    def abort(self):
        if self.transport is not None:
            self.transport.abort()

    def describe_end(self):
        if self.got_close is not None:
            return "the server closed it with code %d" % self.got_close
        exc = self.lost.result() if self.lost.done() else None
        return "the connection ended (%s)" % (exc or "EOF")


async def good_client(ctx, cid):
    cfg, rng = ctx.cfg, ctx.rng
    if await ctx.sleep(rng.uniform(0, cfg["ramp"])):
        return
    while not ctx.stopping:
        try:
            p = await ctx.connect("good", cid)
        except (TimeoutError, OSError, ConnectionError) as exc:
            ctx.error("good_connect_fail", "good#%d: cannot connect: %r" % (cid, exc))
            await ctx.sleep(1.0)
            continue
        ctx.c["good_connects"] += 1
        end = time.monotonic() + rng.uniform(*cfg["good_lifetime"])
        while p.alive and not ctx.stopping and time.monotonic() < end:
            for _ in range(rng.randint(1, 4)):
                p.send_message()
            if not await p.wait_echoes(cfg["echo_timeout"]) and p.alive:
                ctx.error("good_echo_timeout", "good#%d: %d echoes missing after %.0f s" % (cid, len(p.expected), cfg["echo_timeout"]))
                ctx.c["good_lost"] += len(p.expected)
                p.failed = True
                p.abort()
                break
            if await ctx.sleep(rng.expovariate(1.0 / cfg["think"])):
                break
        if p.alive and p.expected and not await p.wait_echoes(cfg["drain"]) and p.alive:
            ctx.error("good_echo_timeout", "good#%d: %d echoes missing at the end" % (cid, len(p.expected)))
            ctx.c["good_lost"] += len(p.expected)
        if not p.alive and not p.failed:
            if p.expected:
                ctx.c["good_lost"] += len(p.expected)
            ctx.error("good_unexpected_close", "good#%d: %s with %d echoes outstanding" % (cid, p.describe_end(), len(p.expected)))
        elif p.alive:
            if await p.close(cfg["close_timeout"]):
                ctx.c["good_closes"] += 1
            else:
                ctx.c["good_close_timeout"] += 1
        p.abort()
        if not ctx.stopping:
            await ctx.sleep(rng.uniform(0, 1))


async def slow_client(ctx, cid):
    cfg, rng = ctx.cfg, ctx.rng
    if await ctx.sleep(rng.uniform(0, cfg["ramp"])):
        return
    rate = cfg["slow_rate"]
    cap = cfg["slow_backlog"]
    while not ctx.stopping:
        try:
            p = await ctx.connect("slow", cid, rcvbuf=cfg["small_rcvbuf"])
        except (TimeoutError, OSError, ConnectionError) as exc:
            ctx.c["slow_connect_fail"] += 1
            if len(ctx.errors) < 50:
                ctx.errors.append("[load %d] slow#%d: cannot connect: %r" % (ctx.idx, cid, exc))
            await ctx.sleep(1.0)
            continue
        ctx.c["slow_connects"] += 1
        reading = True
        phase_end = time.monotonic() + rng.uniform(2, 8)
        while p.alive and not ctx.stopping:
            now = time.monotonic()
            if now >= phase_end:
                reading = not reading
                if reading:
                    p.transport.resume_reading()
                    phase_end = now + rng.uniform(2, 8)
                else:
                    p.transport.pause_reading()
                    ctx.c["slow_pauses"] += 1
                    phase_end = now + rng.uniform(*cfg["slow_pause"])
            if p.outstanding < cap and await p.wait_writable(0.5):
                n = p.send_message(size=ctx.message_size(1024, 65536), fragment_p=0.0)
            else:
                n = 4096
            if await ctx.sleep(n / rate):
                break
        if p.alive:
            p.transport.resume_reading()
            if not await p.wait_echoes(cfg["drain"]) and p.alive:
                ctx.error("slow_missing", "slow#%d: %d echoes (%d bytes) still missing %.0f s after it read again"
                          % (cid, len(p.expected), p.outstanding, cfg["drain"]))
            if p.alive:
                await p.close(cfg["close_timeout"])
        elif not p.failed:
            ctx.c["slow_closed_by_server"] += 1
            if len(ctx.errors) < 50:
                ctx.errors.append("[load %d] note: slow#%d: %s with %d echoes outstanding"
                                  % (ctx.idx, cid, p.describe_end(), len(p.expected)))
        p.abort()
        if not ctx.stopping:
            await ctx.sleep(rng.uniform(0.5, 2))


RESET_VARIANTS = ("half_request", "half_frame", "in_flight", "mid_echo")


async def resetter(ctx, cid):
    cfg, rng = ctx.cfg, ctx.rng
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    if await ctx.sleep(rng.uniform(0, cfg["ramp"])):
        return
    while not ctx.stopping:
        variant = rng.choice(RESET_VARIANTS)
        sock = None
        try:
            sock = await ctx.raw_connect(rcvbuf=cfg["small_rcvbuf"] if rng.random() < 0.5 else None)
            ctx.open["reset"] += 1
            try:
                if variant == "half_request":
                    req = upgrade_request(ctx.port, key)
                    await loop.sock_sendall(sock, req[:rng.randrange(1, len(req))])
                else:
                    await ctx.raw_handshake(sock, key)
                    op = rng.choice((OP_TEXT, OP_BINARY))
                    if variant == "half_frame":
                        frame = client_frame(op, ctx.payload(cid, 0, ctx.message_size(), op == OP_TEXT))
                        await loop.sock_sendall(sock, frame[:rng.randrange(1, len(frame))])
                    elif variant == "in_flight":
                        for i in range(rng.randint(1, 4)):
                            await loop.sock_sendall(sock, client_frame(op, ctx.payload(cid, i, ctx.message_size(4096), op == OP_TEXT)))
                        await asyncio.sleep(rng.uniform(0, 0.05))
                    else:  # mid_echo: a big message, read a little of its echo, reset
                        await loop.sock_sendall(sock, client_frame(op, ctx.payload(cid, 0, rng.randint(128 * 1024, 512 * 1024), op == OP_TEXT)))
                        await asyncio.wait_for(loop.sock_recv(sock, 1024), cfg["io_timeout"])
            finally:
                ctx.open["reset"] -= 1
            ctx.c["reset_done"] += 1
            ctx.c["reset_" + variant] += 1
        except (TimeoutError, OSError, ConnectionError):
            ctx.c["reset_errors"] += 1
        finally:
            if sock is not None:
                ctx.reset(sock)
        await ctx.sleep(rng.uniform(0.05, 0.3))


async def flooder(ctx, cid):
    cfg, rng = ctx.cfg, ctx.rng
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    batch_frames = 512
    batch = b"".join(client_frame(OP_PING, os.urandom(rng.randint(0, 125))) for _ in range(batch_frames))
    if await ctx.sleep(rng.uniform(0, cfg["ramp"])):
        return
    while not ctx.stopping:
        sock = None
        try:
            sock = await ctx.raw_connect(rcvbuf=cfg["small_rcvbuf"])
            ctx.open["ping"] += 1
            try:
                await ctx.raw_handshake(sock, key)
                ctx.c["ping_floods"] += 1
                end = time.monotonic() + rng.uniform(*cfg["flood_time"])
                while not ctx.stopping and time.monotonic() < end:
                    try:
                        # Never cut a batch short and go on (that would send half a frame): a batch
                        # still not taken when the flood is over ends it, with the reset below.
                        await asyncio.wait_for(loop.sock_sendall(sock, batch), max(end - time.monotonic(), 0.0) + 1.0)
                    except TimeoutError:
                        ctx.c["ping_blocked"] += 1  # the server stopped taking them (backpressure)
                        break
                    ctx.c["ping_frames"] += batch_frames
                    ctx.c["ping_bytes"] += len(batch)
            finally:
                ctx.open["ping"] -= 1
        except (TimeoutError, OSError, ConnectionError):
            ctx.c["ping_errors"] += 1
        finally:
            if sock is not None:
                ctx.reset(sock)
        await ctx.sleep(rng.uniform(*cfg["flood_pause"]))


async def load_async(idx, cfg, out, stop_event):
    ctx = Ctx(cfg, idx)
    loop = asyncio.get_running_loop()
    ctx.stop_fut = loop.create_future()
    counts = cfg["counts"][idx]
    base = idx * 1_000_000
    tasks = []
    for role, fn in (("good", good_client), ("slow", slow_client), ("reset", resetter), ("ping", flooder)):
        for _ in range(counts[role]):
            tasks.append(asyncio.ensure_future(fn(ctx, base + len(tasks))))
    parent = os.getppid()
    hard_deadline = time.monotonic() + cfg["duration"] + cfg["drain"] + 120
    next_report = 0.0
    while not stop_event.is_set():
        if os.getppid() != parent or time.monotonic() > hard_deadline:
            os._exit(3)  # the controller is gone: do not linger
        if time.monotonic() >= next_report:
            out.put(("stats", idx, ctx.snapshot()))
            next_report = time.monotonic() + 1.0
        await asyncio.sleep(0.2)
    ctx.stopping = True
    ctx.stop_fut.set_result(None)
    out.put(("stats", idx, ctx.snapshot()))
    stop_deadline = time.monotonic() + cfg["drain"] + cfg["close_timeout"] + 5
    pending = set(tasks)
    while pending and time.monotonic() < stop_deadline:
        done, pending = await asyncio.wait(pending, timeout=1.0)
        out.put(("stats", idx, ctx.snapshot()))
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            exc = t.exception()
            ctx.error("load_crash", "client task crashed: %s" % "".join(traceback.format_exception(exc))[-1500:])
    for p in list(ctx.protos):
        p.abort()
    for s in list(ctx.socks):
        ctx.reset(s)
    ctx.c["leftover_tasks"] += len(pending)
    await asyncio.sleep(0.1)
    out.put(("final", idx, ctx.snapshot()))


def load_main(idx, cfg, out, stop_event):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller decides when to stop
    try:
        try:
            import uvloop
            factory = uvloop.new_event_loop
        except ImportError:
            factory = asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(load_async(idx, cfg, out, stop_event))
    except BaseException:
        out.put(("crash", idx, traceback.format_exc()))
        raise


# ------------------------------------------------------------------ server process


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_tree(pid):
    """pid and its descendants (live ones)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for tid in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, tid)) as f:
                    todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return pids


def read_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_states():
    """socket inode -> TCP state name, for every IPv4/IPv6 TCP socket the kernel lists."""
    names = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
             7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    out[parts[9]] = names.get(int(parts[3], 16), parts[3])
        except (OSError, StopIteration):
            pass
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                out[parts[6]] = "unix"
    except (OSError, StopIteration, IndexError):
        pass
    return out


ORPHAN = "socket, no TCP connection"


def fd_kinds(pid):
    """What the server's descriptors are: 'tcp ESTABLISHED', 'tcp CLOSE_WAIT', 'socket, no TCP
    connection' (closed by the peer and unhashed: a descriptor nobody closed), 'anon_inode:[eventpoll]', ..."""
    states = tcp_states()
    kinds = collections.Counter()
    for p in proc_tree(pid):
        try:
            fds = os.listdir("/proc/%d/fd" % p)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink("/proc/%d/fd/%s" % (p, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                state = states.get(target[8:-1])
                kinds["unix socket" if state == "unix" else "tcp " + state if state else ORPHAN] += 1
            elif target.startswith("/"):
                kinds["file"] += 1
            else:
                kinds[re.sub(r"\[\d+\]$", "", target)] += 1
    return dict(kinds)


def fmt_kinds(kinds):
    return ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))


def server_usage(pid):
    """(RSS MiB, open fds, CPU seconds) summed over the server and its children."""
    rss = fds = 0
    cpu = 0.0
    for p in proc_tree(pid):
        try:
            rss += read_rss_kib(p)
            fds += len(os.listdir("/proc/%d/fd" % p))
            cpu += read_cpu_s(p)
        except (OSError, ValueError, IndexError):
            pass
    return rss / 1024.0, fds, cpu


class Server:
    STARTUP = re.compile(r"serving (\S+) on (wss?)://([^ ]+):(\d+)/ \((.*)\)")

    def __init__(self, args, nofile):
        env = dict(os.environ, FASTWS_EXTENSION="0" if args.pure else "1")
        self.log_path = os.path.join(tempfile.mkdtemp(prefix="fastws-soak-"), "server.log")
        self.log_file = open(self.log_path, "w")
        self.cmd = [args.python, "-m", "fastws", "serve", "echo", "--host", "127.0.0.1", "--port", "0",
                    "--workers", "1", "--log-level", args.server_log_level] + args.server_arg

        def limit():
            raise_nofile(nofile)

        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.log_file, text=True, env=env,
                                     cwd=tempfile.gettempdir(), preexec_fn=limit, start_new_session=True)
        self.pid = self.proc.pid
        lines = queue.Queue()
        threading.Thread(target=self._pump, args=(lines,), daemon=True).start()
        self.startup_line = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            m = self.STARTUP.search(line)
            if m:
                self.startup_line = line
                self.port = int(m.group(4))
                self.details = m.group(5)
                break
        if self.startup_line is None:
            self.kill()
            raise RuntimeError("fastws serve did not start; its log:\n" + self.log_tail(40))

    def _pump(self, lines):
        for line in self.proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, n=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(collections.deque(f, n))
        except OSError:
            return ""

    def log_problems(self):
        counts = collections.Counter()
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    for word in ("Traceback", "ERROR", "CRITICAL", "WARNING"):
                        if word in line:
                            counts[word] += 1
        except OSError:
            pass
        return dict(counts)

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ controller


def parse_mix(text):
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in ROLES:
            raise argparse.ArgumentTypeError("unknown role %r (use %s)" % (name, ", ".join(ROLES)))
        mix[name] = float(weight)
    return mix


def role_counts(total, mix, procs):
    weights = sum(mix.values())
    counts = {r: int(round(total * mix.get(r, 0) / weights)) for r in ROLES}
    counts["good"] = max(total - sum(counts[r] for r in ROLES if r != "good"), 0) if mix.get("good") else 0
    per = [{r: counts[r] // procs + (1 if i < counts[r] % procs else 0) for r in ROLES} for i in range(procs)]
    return counts, per


def lat_percentiles(hist):
    total = sum(hist.values())
    if not total:
        return None, None
    out = []
    for q in (0.5, 0.99):
        need, acc = q * total, 0
        for b in sorted(hist):
            acc += hist[b]
            if acc >= need:
                out.append(1.2 ** (b + 1) / 1000.0)  # upper edge of the bucket, ms
                break
    return out[0], out[1]


class Loads:
    """The load processes and their latest reports."""

    def __init__(self, args, port, per_proc):
        mpctx = multiprocessing.get_context("spawn")
        self.queue = mpctx.Queue()
        self.stop_event = mpctx.Event()
        cfg = {
            "port": port, "seed": args.seed, "duration": args.duration, "ramp": args.ramp, "think": args.think,
            "counts": per_proc, "io_timeout": 10.0, "echo_timeout": args.echo_timeout, "drain": args.drain,
            "close_timeout": 10.0, "good_lifetime": (30.0, 120.0), "small_rcvbuf": 4096,
            "slow_rate": args.slow_rate * 1024, "slow_backlog": 4 * MiB, "slow_pause": (2.0, 12.0),
            "flood_time": (5.0, 15.0), "flood_pause": (0.5, 3.0),
        }
        self.procs = [mpctx.Process(target=load_main, args=(i, cfg, self.queue, self.stop_event), daemon=True,
                                    name="soak-load-%d" % i) for i in range(len(per_proc))]
        self.latest = [None] * len(self.procs)
        self.final = [False] * len(self.procs)
        self.crashes = []
        for p in self.procs:
            p.start()

    def poll(self, timeout=0.0):
        end = time.monotonic() + timeout
        while True:
            try:
                kind, idx, data = self.queue.get(timeout=max(end - time.monotonic(), 0.0) if timeout else 0.0001)
            except queue.Empty:
                return
            if kind == "crash":
                self.crashes.append("load process %d crashed:\n%s" % (idx, data))
            else:
                self.latest[idx] = data
                if kind == "final":
                    self.final[idx] = True
            timeout = 0

    def totals(self):
        c, o, lat, errors, cpu = collections.Counter(), collections.Counter(), collections.Counter(), [], 0.0
        for snap in self.latest:
            if snap:
                c.update(snap["counters"])
                o.update(snap["open"])
                lat.update({int(k): v for k, v in snap["lat"].items()})
                errors.extend(snap["errors"])
                cpu += snap["cpu_s"]
        return c, o, lat, errors, cpu

    def dead_early(self):
        return [i for i, p in enumerate(self.procs) if not p.is_alive() and not self.final[i]]

    def stop(self, timeout):
        self.stop_event.set()
        end = time.monotonic() + timeout
        while time.monotonic() < end and not all(self.final[i] or not p.is_alive() for i, p in enumerate(self.procs)):
            self.poll(0.5)
        self.poll(0.2)
        for p in self.procs:
            p.join(max(end - time.monotonic(), 1.0))

    def kill(self):
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(5)


def evaluate(args, samples, baseline, end, totals, notes, aborted):
    """The verdict: (passed, reasons)."""
    reasons = []
    c = totals
    for key, what in (("good_corrupt", "good clients got corrupted/unexpected data or protocol errors"),
                      ("slow_corrupt", "slow readers got corrupted/unexpected data or protocol errors"),
                      ("good_lost", "messages of good clients were lost (never echoed)"),
                      ("good_unexpected_close", "good clients' connections were closed or reset by the server"),
                      ("good_echo_timeout", "good clients waited more than --echo-timeout for echoes"),
                      ("good_connect_fail", "good clients could not connect or finish the handshake"),
                      ("good_handshake", "good clients got a bad handshake answer"),
                      ("slow_handshake", "slow readers got a bad handshake answer"),
                      ("slow_missing", "slow readers did not get all their echoes after reading again"),
                      ("load_crash", "a client task crashed (bug in the soak)")):
        if c.get(key):
            reasons.append("%s: %d" % (what, c[key]))
    if not c.get("good_verified"):
        reasons.append("no good-client message was verified at all")
    reasons.extend(aborted)
    # Levelling: the max over the last third may exceed the max over the middle third only by the allowance.
    load = [s for s in samples if s["phase"] == "load"]
    span = load[-1]["t"] if load else 0
    mid = [s for s in load if span / 3 <= s["t"] < 2 * span / 3]
    last = [s for s in load if s["t"] >= 2 * span / 3]
    level = {"span_s": span, "middle_samples": len(mid), "last_samples": len(last)}
    if len(mid) < 2 or len(last) < 2:
        notes.append("too few samples to judge levelling (%d in the middle third, %d in the last; "
                     "want 2 each: longer --duration or shorter --interval)" % (len(mid), len(last)))
    else:
        for key, unit, pct, absolute in (("rss_mib", "MiB", args.rss_pct, args.rss_mib), ("fds", "fds", args.fd_pct, args.fd_abs)):
            m = max(s[key] for s in mid)
            l_ = max(s[key] for s in last)
            allowed = max(m * pct / 100.0, absolute)
            level[key] = {"middle_max": m, "last_max": l_, "growth": l_ - m, "allowed": allowed}
            if l_ - m > allowed:
                reasons.append("%s does not level off: max %.1f %s over the last third vs %.1f over the middle third "
                               "(+%.1f, allowed +%.1f = max(%g%%, %g))" % ("RSS" if key == "rss_mib" else "open fds", l_, unit, m,
                                                                           l_ - m, allowed, pct, absolute))
    if end.get("fds_returned") is False:
        reasons.append("server fds did not return to the baseline after all clients left: %d open %.0f s later, baseline %d (+%d allowed, "
                       "and no '%s' beyond the baseline's); they are: %s" % (end["fds_last"], end["waited_s"], baseline["fds"], args.fd_slack,
                                                                          ORPHAN, fmt_kinds(end["fd_kinds"])))
    return not reasons, reasons, level


def write_results(path_json, path_md, result):
    os.makedirs(os.path.dirname(path_json), exist_ok=True)
    with open(path_json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    s = result["summary"]
    lines = ["# fastws soak: %s" % s["verdict"], ""]
    lines.append("%s, commit %s, %s; %d connections (%s) for %.0f s, %d load process(es); server: %s."
                 % (result["started"], result["git"], "pure Python" if result["config"]["pure"] else "compiled path",
                    result["config"]["connections"], ", ".join("%s %d" % kv for kv in result["config"]["roles"].items()),
                    result["config"]["duration"], result["config"]["procs"], result["server"]["details"]))
    lines.append("")
    if s["reasons"]:
        lines += ["Failed because:", ""] + ["- " + r for r in s["reasons"]] + [""]
    if s["notes"]:
        lines += ["Notes:", ""] + ["- " + n for n in s["notes"]] + [""]
    lines += ["| t (s) | server RSS (MiB) | server fds | conns open | good verified | good msgs/s | p99 echo (ms) | server CPU |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in result["samples"]:
        lines.append("| %s%.0f | %.1f | %d | %d | %d | %s | %s | %s |" % (
            "end " if x["phase"] == "end" else "", x["t"], x["rss_mib"], x["fds"], x["conns_open"], x["good_verified"],
            "%.0f" % x["good_rate"] if x.get("good_rate") is not None else "",
            "%.1f" % x["p99_ms"] if x.get("p99_ms") is not None else "",
            "%.0f%%" % x["server_cpu_pct"] if x.get("server_cpu_pct") is not None else ""))
    t = s["totals"]
    lines += ["", "Baseline (idle server): %.1f MiB, %d fds. After all clients left: %s." % (
        result["baseline"]["rss_mib"], result["baseline"]["fds"], s["end_text"]), "",
        "Totals: %d good messages verified (%.1f MB), %d slow-reader echoes verified, %d resets, %d ping frames flooded "
        "in %d floods; %d good reconnects, %d slow readers closed by the server." % (
            t.get("good_verified", 0), t.get("good_bytes", 0) / 1e6, t.get("slow_verified", 0), t.get("reset_done", 0),
            t.get("ping_frames", 0), t.get("ping_floods", 0), t.get("good_connects", 0), t.get("slow_closed_by_server", 0))]
    with open(path_md, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Soak test of fastws serve (echo) with hostile peers; see bench/README.md.")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    ap.add_argument("--connections", type=int, default=2000, help="concurrent client slots (default 2000)")
    ap.add_argument("--mix", type=parse_mix, default=parse_mix(DEFAULT_MIX),
                    help="shares of the roles good, slow, reset, ping (default %s)" % DEFAULT_MIX)
    ap.add_argument("--procs", type=int, default=2, choices=(1, 2), help="load processes (default 2)")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--pure", action="store_true", help="serve with FASTWS_EXTENSION=0 (pure Python)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs fastws serve (default: this one)")
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for fastws serve (repeatable)")
    ap.add_argument("--server-log-level", default="warning")
    ap.add_argument("--think", type=float, default=0.5, help="mean pause (s) of a good client between bursts of 1-4 messages (default 0.5)")
    ap.add_argument("--ramp", type=float, default=None, help="seconds over which clients start (default min(10, duration/10))")
    ap.add_argument("--slow-rate", type=float, default=512, help="KiB/s each slow reader sends (default 512)")
    ap.add_argument("--echo-timeout", type=float, default=60.0, help="a good client's echo later than this is lost (default 60)")
    ap.add_argument("--drain", type=float, default=20.0, help="at the end, seconds for outstanding echoes (default 20)")
    ap.add_argument("--rss-pct", type=float, default=10.0, help="RSS levelling allowance, %% of the middle third's max (default 10)")
    ap.add_argument("--rss-mib", type=float, default=32.0, help="... or this many MiB, whichever is larger (default 32)")
    ap.add_argument("--fd-pct", type=float, default=5.0, help="fd levelling allowance, %% (default 5)")
    ap.add_argument("--fd-abs", type=int, default=64, help="... or this many fds, whichever is larger (default 64)")
    ap.add_argument("--fd-slack", type=int, default=4, help="fds above the idle baseline allowed at the end (default 4)")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds for the fds to return to the baseline at the end (default 30)")
    ap.add_argument("--max-rss-mib", type=float, default=2048.0, help="stop the run (fail) if the server's RSS exceeds this (default 2048)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(RESULTS, "soak-latest"), help="result files prefix (default bench/results/soak-latest)")
    ap.add_argument("--no-save", action="store_true", help="do not write the result files")
    args = ap.parse_args(argv)
    if args.ramp is None:
        args.ramp = min(10.0, args.duration / 10)
    counts, per_proc = role_counts(args.connections, args.mix, args.procs)
    nofile = raise_nofile(args.connections * 2 + 2048)
    if nofile < args.connections + 512:
        log("warning: RLIMIT_NOFILE is only %d (hard limit); --connections %d may not fit" % (nofile, args.connections))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    server = loads = None
    try:
        server = Server(args, nofile)
        log("server pid %d: %s" % (server.pid, server.startup_line))
        if not args.pure and "compiled" not in server.details:
            log("error: asked for the compiled path but the server says: %s" % server.details)
            return 2
        time.sleep(1.0)
        rss0, fds0, cpu0 = server_usage(server.pid)
        baseline = {"rss_mib": rss0, "fds": fds0, "fd_kinds": fd_kinds(server.pid)}
        log("baseline: RSS %.1f MiB, %d fds; RLIMIT_NOFILE %d" % (rss0, fds0, nofile))
        log("load: %d connections (%s) in %d process(es) for %.0f s, sample every %.0f s"
            % (args.connections, ", ".join("%s %d" % (r, counts[r]) for r in ROLES), args.procs, args.duration, args.interval))
        loads = Loads(args, server.port, per_proc)
        samples, aborted, notes = [], [], []
        t0 = time.monotonic()
        prev = {"t": 0.0, "cpu": cpu0, "verified": 0, "lat": collections.Counter(), "load_cpu": 0.0}
        peak_rss = rss0

        def sample(phase):
            now = time.monotonic()
            rss, fds, cpu = server_usage(server.pid)
            c, o, lat, _, lcpu = loads.totals()
            t = now - t0
            dt = max(t - prev["t"], 1e-6)
            p50, p99 = lat_percentiles(lat - prev["lat"])
            s = {"t": round(t, 1), "phase": phase, "rss_mib": round(rss, 1), "fds": fds,
                 "conns_open": sum(o.values()), "open": dict(o),
                 "good_verified": c.get("good_verified", 0), "good_rate": (c.get("good_verified", 0) - prev["verified"]) / dt,
                 "slow_verified": c.get("slow_verified", 0), "resets": c.get("reset_done", 0), "ping_frames": c.get("ping_frames", 0),
                 "p50_ms": p50, "p99_ms": p99, "server_cpu_pct": 100.0 * (cpu - prev["cpu"]) / dt,
                 "load_cpu_pct": 100.0 * (lcpu - prev["load_cpu"]) / dt,
                 "failures": sum(v for k, v in c.items() if k in ("good_corrupt", "slow_corrupt", "good_lost", "good_unexpected_close",
                                                                   "good_echo_timeout", "good_connect_fail"))}
            prev.update(t=t, cpu=cpu, verified=s["good_verified"], lat=lat, load_cpu=lcpu)
            samples.append(s)
            log("t=%5.0fs  RSS %7.1f MiB  fds %5d  open %5d (good %d slow %d reset %d ping %d)  verified %8d (%5.0f/s)  "
                "p99 %s  resets %6d  pings %8d  srv CPU %3.0f%%  load CPU %3.0f%%  failures %d" % (
                    t, rss, fds, s["conns_open"], o.get("good", 0), o.get("slow", 0), o.get("reset", 0), o.get("ping", 0),
                    s["good_verified"], s["good_rate"], "%6.1f ms" % p99 if p99 is not None else "     - ms",
                    s["resets"], s["ping_frames"], s["server_cpu_pct"], s["load_cpu_pct"], s["failures"]))
            return s

        next_sample = t0 + args.interval
        end_time = t0 + args.duration
        while True:
            loads.poll(0.5)
            now = time.monotonic()
            if not server.alive():
                aborted.append("the server exited (status %s) %.0f s into the run; log tail:\n%s"
                               % (server.proc.returncode, now - t0, server.log_tail(15)))
                break
            if loads.crashes or loads.dead_early():
                aborted.append("a load process died: %s" % ("\n".join(loads.crashes) or "no report"))
                break
            rss = sum(read_rss_kib(p) for p in proc_tree(server.pid)) / 1024.0
            peak_rss = max(peak_rss, rss)
            if rss > args.max_rss_mib:
                sample("load")
                aborted.append("server RSS reached %.0f MiB (> --max-rss-mib %.0f) %.0f s into the run; stopped early"
                               % (rss, args.max_rss_mib, now - t0))
                break
            if now >= end_time:
                sample("load")
                break
            if now >= next_sample:
                sample("load")
                next_sample += args.interval
        for a in aborted:
            log("ABORT: " + a)
        log("stopping the clients (good ones drain and close, hostile ones reset)")
        loads.stop(args.drain + 30)
        loads.kill()
        loads.poll(0.5)
        end = {}
        if server.alive():
            t_stop = time.monotonic()
            orphans0 = baseline["fd_kinds"].get(ORPHAN, 0)

            def returned():
                fds, kinds = server_usage(server.pid)[1], fd_kinds(server.pid)
                return fds <= fds0 + args.fd_slack and kinds.get(ORPHAN, 0) <= orphans0, fds, kinds

            ok, fds, kinds = returned()
            while not ok and time.monotonic() - t_stop < args.settle and server.alive():
                time.sleep(0.25)
                ok, fds, kinds = returned()
            waited = time.monotonic() - t_stop
            rss_end = server_usage(server.pid)[0]
            end = {"fds_returned": ok, "fds_last": fds, "waited_s": round(waited, 1),
                   "rss_mib": round(rss_end, 1), "fd_kinds": kinds}
            sample("end")
            end_text = ("fds back to %d (baseline %d) %.1f s after the load processes exited, RSS %.1f MiB"
                        % (fds, fds0, waited, rss_end) if ok else
                        "fds still %d (baseline %d) after %.0f s, RSS %.1f MiB" % (fds, fds0, waited, rss_end))
        else:
            end_text = "the server is gone"
        log("end: " + end_text)
        if end:
            log("server fds at the end: %s (baseline: %s)" % (fmt_kinds(end["fd_kinds"]), fmt_kinds(baseline["fd_kinds"])))
            end_text += "; fds: %s (baseline: %s)" % (fmt_kinds(end["fd_kinds"]), fmt_kinds(baseline["fd_kinds"]))
        totals, _, _, errors, _ = loads.totals()
        problems = server.log_problems()
        if problems:
            notes.append("server log (%s): %s" % (server.log_path, ", ".join("%d %s" % (v, k) for k, v in problems.items())))
        if totals.get("slow_closed_by_server"):
            notes.append("%d slow-reader connections were closed by the server (allowed: the server may drop peers that do not read)"
                         % totals["slow_closed_by_server"])
        if totals.get("good_close_timeout"):
            notes.append("%d good closing handshakes were not finished by the server within 10 s" % totals["good_close_timeout"])
        if totals.get("leftover_tasks"):
            notes.append("%d client tasks had to be cancelled at the end" % totals["leftover_tasks"])
        passed, reasons, level = evaluate(args, samples, baseline, end, totals, notes, aborted)
        code = server.stop()
        if code not in (0, None):
            notes.append("fastws serve exited with status %s on SIGTERM" % code)
        verdict = "PASS" if passed else "FAIL"
        log("")
        log("verdict: %s" % verdict)
        for r in reasons:
            log("  - " + r)
        for n in notes:
            log("  note: " + n)
        for e in errors[:10]:
            log("  first errors: " + e)
        result = {
            "started": started, "git": git_commit(),
            "config": {"duration": args.duration, "connections": args.connections, "roles": counts, "procs": args.procs,
                       "pure": args.pure, "interval": args.interval, "think": args.think, "slow_rate_kib": args.slow_rate,
                       "seed": args.seed, "nofile": nofile},
            "server": {"cmd": server.cmd, "startup_line": server.startup_line, "details": server.details},
            "thresholds": {"rss_pct": args.rss_pct, "rss_mib": args.rss_mib, "fd_pct": args.fd_pct, "fd_abs": args.fd_abs,
                           "fd_slack": args.fd_slack, "settle_s": args.settle, "max_rss_mib": args.max_rss_mib,
                           "echo_timeout_s": args.echo_timeout},
            "baseline": baseline, "samples": samples, "end": end,
            "summary": {"verdict": verdict, "reasons": reasons, "notes": notes, "levelling": level,
                        "peak_rss_mib": round(peak_rss, 1), "end_text": end_text, "totals": dict(totals),
                        "errors": errors[:50]},
        }
        if not args.no_save:
            write_results(args.out + ".json", args.out + ".md", result)
            log("results: %s.json, %s.md" % (args.out, args.out))
        return 0 if passed else 1
    except KeyboardInterrupt:
        log("interrupted; stopping everything (no result files)")
        return 130
    finally:
        if loads is not None:
            loads.stop_event.set()
            loads.kill()
        if server is not None:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
