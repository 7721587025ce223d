"""The rules of the fuzz harnesses, in one place.

Each ``check_*`` function takes the raw bytes of one fuzz input and returns
quietly when fastws behaved, or raises (``Mismatch``, ``Violation`` or whatever
unexpected exception fastws let out) when it did not. The atheris harnesses
(``fuzz_*.py``), the replay script and ``tests/test_fuzz_regressions.py`` all
call these functions, so a crash file found by the fuzzer fails the normal
test suite once it is copied into ``regressions/<harness>/``.

This module needs only fastws (compiled extension included) and the standard
library: atheris is not imported here.

Input layouts (all derived from the bytes, so a file replays the same way
everywhere):

* frames, handshake: ``[options][n][n cut points, 2 bytes each][payload]``;
  the payload is fed in chunks cut at those points (taken modulo len + 1).
* deflate: ``[3 bytes: client settings][3 bytes: server settings][header text]``;
  the text (latin-1, like HTTP header values) holds header values, one a line.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import struct
import sys
from collections.abc import Callable
from typing import Any

import fastws._pure as PY
from fastws.exceptions import InvalidRequest, InvalidResponse, ProtocolError
from fastws.extensions.permessage_deflate import (
    NAME as DEFLATE,
    ClientDeflate,
    Deflate,
    PerMessageDeflate,
    parse_extensions,
    server_extension_factory,
)
from fastws.handshake import ClientHandshake, ServerHandshake, accept_key
from fastws.protocol import ACCEPTED, READING, REFUSED, ServerOpening

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for _twins
from _twins import feed_buffered, recorder  # noqa: E402

# The differential check is the point of the frames harness: without the
# compiled twin it would compare pure Python with itself, so a missing
# extension is an ImportError here, not a silent fallback.
C = importlib.import_module("fastws._speedups")

TWINS = {"py": PY, "c": C}


class Mismatch(AssertionError):
    """The compiled core and the pure-Python core did different things."""


class Violation(AssertionError):
    """fastws broke one of its own rules (or the RFC's) without raising."""


def _require(condition: object, message: str) -> None:
    if not condition:
        raise Violation(message)


# -- input layout ---------------------------------------------------------------------------------


def split_input(data: bytes) -> tuple[int, list[bytes]]:
    """(options byte, payload chunks) from ``[options][n][n * 2-byte cut points][payload]``."""
    if len(data) < 2:
        return 0, [data]
    options, n = data[0], data[1] & 15
    cuts = [struct.unpack_from("!H", data, 2 + 2 * i)[0] for i in range(n) if 2 + 2 * i + 2 <= len(data)]
    payload = data[2 + 2 * n :]
    points = sorted(c % (len(payload) + 1) for c in cuts)
    return options, [payload[a:b] for a, b in zip([0] + points, points + [len(payload)], strict=True)]


def join_input(options: int, chunks: list[bytes]) -> bytes:
    """The inverse of split_input (for writing seed files); at most 15 cuts."""
    assert len(chunks) <= 16
    payload = b"".join(chunks)
    cuts, pos = [], 0
    for chunk in chunks[:-1]:
        pos += len(chunk)
        cuts.append(pos)
    return bytes([options, len(cuts)]) + b"".join(struct.pack("!H", c) for c in cuts) + payload


# -- frames: both protocol cores, both roles ----------------------------------------------------------

MAX_SIZES: list[int | None] = [2**20, None, 0, 1, 16, 125, 126, 65536]


def frames_options(options: int) -> dict[str, Any]:
    """options bits 0-2: max_size; 3-4: extension; 5: max_fragments=3; 6: feed the compiled core
    through get_buffer/buffer_updated; 7: after the input, send a message if still open."""
    return {
        "max_size": MAX_SIZES[options & 7],
        "extension": (None, "deflate", "deflate-9-reset", "identity")[(options >> 3) & 3],
        "max_fragments": 3 if options & 0x20 else None,
        "buffer": bool(options & 0x40),
        "send": bool(options & 0x80),
    }


class IdentityExtension:
    """An extension whose 'compression' is the identity: RSV1 frames with plain payloads."""

    def decode(self, data: Any, fin: bool, size: int, max_size: int | None) -> bytes:
        data = bytes(data)
        if max_size is not None and size + len(data) > max_size:
            from fastws.exceptions import PayloadTooBig

            raise PayloadTooBig("identity extension: over max_size")
        return data

    def encode(self, opcode: int, payload: Any, fin: bool) -> tuple[bytes, bool]:
        return bytes(payload), opcode != 0


def make_extension(kind: str | None) -> Any:
    if kind == "deflate":
        return PerMessageDeflate()
    if kind == "deflate-9-reset":
        return PerMessageDeflate(compress_bits=9, decompress_bits=9, reset_compressor=True, reset_decompressor=True)
    if kind == "identity":
        return IdentityExtension()
    return None


def parse_written(data: bytes, masked: bool) -> list[tuple[Any, ...]]:
    """Frames a core wrote, unmasked (client keys are random), checked for well-formedness."""
    out = []
    pos = 0
    data = bytes(data)
    while pos < len(data):
        _require(len(data) - pos >= 2, f"truncated frame header in output {data[pos:pos + 16]!r}")
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            n, = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            n, = struct.unpack_from("!Q", data, pos)
            pos += 8
        _require(bool(b1 & 0x80) == masked, "output frame masked wrongly for its role")
        key = b""
        if masked:
            key = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + n]
        _require(len(payload) == n, "truncated payload in output")
        pos += n
        if key:
            payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
        out.append(("write", b0, payload))
    return out


RECORDERS = {name: recorder(mod) for name, mod in TWINS.items()}


def run_core(twin: str, chunks: list[bytes], client: bool, opts: dict[str, Any]) -> list[Any]:
    """Feed ``chunks`` to one core; everything it did, in order. Exceptions propagate."""
    log: list[Any] = []
    core = RECORDERS[twin](
        client, max_size=opts["max_size"], max_fragments=opts["max_fragments"], extension=make_extension(opts["extension"])
    )
    core.log = log
    core._write = lambda data: log.extend(parse_written(data, client))
    core._on_message = lambda c, data, is_text: log.append(("message", type(data).__name__, bytes(data), is_text))
    for chunk in chunks:
        if opts["buffer"] and twin == "c":
            feed_buffered(core, chunk)
        else:
            core.receive_data(chunk)
        log.append(("chunk",))
    f = core.failure
    log.append(
        ("final", core.state, core.close_code, core.close_reason, core.close_sent, core.close_received,
         None if f is None else (type(f).__name__, getattr(f, "code", None), str(f)))
    )
    if opts["send"] and core.state == PY.OPEN:
        core.send("fuzz ✓")
        core.send(b"\x00\xff" * 40)
        core.ping(b"p")
    core.connection_closed()
    err = core.closed_error()
    log.append(("closed", core.state, type(err).__name__, err.code, err.reason))
    return log


def _first_difference(a: list[Any], b: list[Any]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"event {i}:\n  py: {x!r:.300}\n  c:  {y!r:.300}"
    return f"lengths differ: py {len(a)} events, c {len(b)} events; extra: {(a[len(b):] or b[len(a):])[:3]!r:.300}"


def check_frame_log(log: list[Any], client: bool, opts: dict[str, Any]) -> None:
    """Rules every core must keep, whatever the other twin does."""
    max_size = opts["max_size"]
    failed = False
    for event in log:
        if event[0] == "message":
            _require(not failed, "message delivered after a protocol error")
            data, is_text = event[2], event[3]
            if max_size is not None:
                _require(len(data) <= max_size, f"message of {len(data)} bytes with max_size={max_size}")
            if is_text:
                try:
                    data.decode("utf-8")
                except UnicodeDecodeError:
                    raise Violation(f"invalid UTF-8 delivered as text: {data[:40]!r}") from None
        elif event[0] == "protocol error":
            failed = True
            _require(event[1] in ("ProtocolError", "PayloadTooBig"), f"unexpected error type {event[1]}")
            _require(event[2] in (1002, 1007, 1009), f"unexpected failure close code {event[2]}")


def check_frames(data: bytes) -> None:
    """The same bytes to a server core and a client core of each twin: identical behaviour."""
    options, chunks = split_input(data)
    opts = frames_options(options)
    for client in (False, True):
        logs = {}
        for twin in TWINS:
            try:
                logs[twin] = run_core(twin, chunks, client, opts)
            except (Mismatch, Violation):
                raise
            except Exception as exc:
                raise Violation(
                    f"{twin} core ({'client' if client else 'server'}, {opts}) raised {type(exc).__name__}: {exc}"
                ) from exc
        if logs["py"] != logs["c"]:
            raise Mismatch(f"{'client' if client else 'server'} cores differ ({opts}) at {_first_difference(logs['py'], logs['c'])}")
        check_frame_log(logs["py"], client, opts)


# -- handshake: server parses a request, client checks a response ------------------------------------

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _server_handshake(variant: int) -> ServerHandshake:
    if variant == 0:
        return ServerHandshake()
    if variant == 1:
        return ServerHandshake(
            subprotocols=["chat", "superchat"],
            origins=["https://example.com", None],
            extension_factory=server_extension_factory("deflate"),
        )
    if variant == 2:
        return ServerHandshake(
            select_subprotocol=lambda request, offered: offered[0] if offered else None,
            origins=lambda origin: origin is None or origin.endswith(".example"),
            extension_factory=server_extension_factory(
                Deflate(window_bits=9, peer_window_bits=None, no_context_takeover=True, peer_no_context_takeover=True)
            ),
            server_header="fastws-fuzz",
        )
    return ServerHandshake(extension_factory=server_extension_factory(Deflate(window_bits=15, peer_window_bits=15)))


def _client_deflate(variant: int) -> ClientDeflate | None:
    return [
        None,
        ClientDeflate(Deflate()),
        ClientDeflate(Deflate(peer_window_bits=None, no_context_takeover=True, peer_no_context_takeover=True)),
        ClientDeflate(Deflate(window_bits=9, peer_window_bits=8)),
    ][variant]


def _feed(reader: Callable[[bytes], Any], chunks: list[bytes]) -> Any:
    for chunk in chunks:
        result = reader(chunk)
        if result is not None:
            return result
    return None


def check_server_handshake(variant: int, chunks: list[bytes]) -> None:
    """The opening as a server runs it (``ServerOpening``): refused with an answer carrying
    the error's status, or accepted with a 101 that a fastws client takes."""
    opening = ServerOpening(_server_handshake(variant))
    state = READING
    for chunk in chunks:
        state = opening.receive_data(chunk)
        if state != READING:
            break
    if state == READING:
        return
    if state == REFUSED:
        error = opening.error
        if not isinstance(error, InvalidRequest):
            raise Violation(f"refused without an InvalidRequest: {error!r}")
        _require(opening.answer.startswith(f"HTTP/1.1 {int(error.status)} ".encode()), "bad error response")
        return
    if state != ACCEPTED or opening.request is None:
        raise Violation(f"state {state} after a complete head")
    answer, subprotocol, extension, rest = opening.answer, opening.subprotocol, opening.extension, opening.rest
    headers = opening.request.headers
    # Accepted: the answer must satisfy a fastws client that sent this key and these offers.
    _require(answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and answer.endswith(b"\r\n\r\n"), "bad 101 answer")
    offered = [t.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for t in v.split(",") if t.strip()]
    _require(subprotocol is None or subprotocol in offered, f"subprotocol {subprotocol!r} was not offered")
    client = ClientHandshake("example.com", 80, "/", subprotocols=offered, extension_offer="x" if extension is not None else None)
    client.key = headers["Sec-WebSocket-Key"]
    try:
        result = client.receive_data(answer + rest)
    except InvalidResponse as exc:
        raise Violation(f"a fastws client rejects the server's 101 answer: {exc}\n{answer!r:.600}") from None
    _require(result is not None, "the 101 answer is incomplete")
    response, after = result
    _require(after == rest, "bytes after the head were lost")
    _require(response.headers.get("Sec-WebSocket-Protocol") == subprotocol, "subprotocol changed on the way")
    values = response.headers.get_all("Sec-WebSocket-Extensions")
    if extension is None:
        _require(not values, "extension header without an extension")
    else:
        _require(isinstance(extension, PerMessageDeflate), f"extension {extension!r}")
        _check_deflate_answer(values, extension)


def check_client_handshake(variant: int, chunks: list[bytes]) -> None:
    deflate = _client_deflate(variant)
    handshake = ClientHandshake(
        "example.com", 80, "/chat",
        subprotocols=["chat", "superchat"] if variant & 1 else [],
        extension_offer=deflate.offer if deflate else None,
    )
    handshake.key = RFC_KEY
    try:
        result = _feed(handshake.receive_data, chunks)
        if result is None:
            return
        response, rest = result
        _require(response.status == 101, f"accepted status {response.status}")
        _require(response.headers.get("Sec-WebSocket-Accept") == accept_key(RFC_KEY), "accepted a wrong key")
        if deflate is not None:
            agreed = deflate.accept(response.headers.get_all("Sec-WebSocket-Extensions"))
            if agreed is not None:
                _check_codec_bounds(agreed)
                _require(agreed.compress_bits <= deflate.settings.window_bits, "compress window above our setting")
    except InvalidResponse:
        return


def check_handshake(data: bytes) -> None:
    """options bit 0: client (1) or server (0); bits 1-2: configuration variant."""
    options, chunks = split_input(data)
    variant = (options >> 1) & 3
    if options & 1:
        check_client_handshake(variant, chunks)
    else:
        check_server_handshake(variant, chunks)


# -- permessage-deflate negotiation -------------------------------------------------------------------


def deflate_settings(raw: bytes) -> Deflate:
    """A valid Deflate from 3 bytes."""
    a, b, c = (raw + b"\0\0\0")[:3]
    peer = (None, 8, 9, 10, 11, 12, 13, 14, 15)[b % 9]
    return Deflate(
        window_bits=9 + a % 7,
        mem_level=1 + (a >> 3) % 9,
        level=-1 + c % 11,
        peer_window_bits=peer,
        no_context_takeover=bool(b & 0x10),
        peer_no_context_takeover=bool(b & 0x20),
    )


def _check_codec_bounds(ext: PerMessageDeflate) -> None:
    _require(9 <= ext.compress_bits <= 15, f"compress window {ext.compress_bits}")
    _require(9 <= ext.decompress_bits <= 15, f"decompress window {ext.decompress_bits}")


def _params(header: str) -> dict[str, str | None]:
    parsed = parse_extensions([header])
    _require(len(parsed) == 1 and parsed[0][0] == DEFLATE, f"answer {header!r} is not one permessage-deflate")
    params = dict(parsed[0][1])
    _require(len(params) == len(parsed[0][1]), f"repeated parameter in {header!r}")
    return params


def _check_deflate_answer(values: list[str], ext: PerMessageDeflate) -> None:
    """What the server answered is what its codec does."""
    _require(len(values) == 1, f"answer in {len(values)} header fields")
    params = _params(values[0])
    _check_codec_bounds(ext)
    _require(ext.reset_compressor == ("server_no_context_takeover" in params), "server_no_context_takeover vs codec")
    _require(ext.reset_decompressor == ("client_no_context_takeover" in params), "client_no_context_takeover vs codec")
    if "server_max_window_bits" in params:
        _require(ext.compress_bits == int(params["server_max_window_bits"] or 0), "server_max_window_bits vs codec")
    if "client_max_window_bits" in params:
        bits = int(params["client_max_window_bits"] or 0)
        _require(ext.decompress_bits == max(bits, 9), "client_max_window_bits vs codec")
    else:
        _require(ext.decompress_bits == 15, "no client_max_window_bits but a smaller decompress window")


def _answers_an_offer(answer: dict[str, str | None], offers: list[tuple[str, list[tuple[str, str | None]]]]) -> bool:
    """RFC 7692 7.1: some permessage-deflate offer that this answer is a valid answer to."""
    for name, plist in offers:
        if name != DEFLATE:
            continue
        offer = dict(plist)
        if "client_max_window_bits" in answer and "client_max_window_bits" not in offer:
            continue
        if "server_no_context_takeover" in offer and "server_no_context_takeover" not in answer:
            continue
        if offer.get("server_max_window_bits"):
            if "server_max_window_bits" not in answer:
                continue
            if int(answer["server_max_window_bits"] or 99) > int(offer["server_max_window_bits"] or 0):
                continue
        return True
    return False


def _block(n: int) -> bytes:
    """n bytes that deflate cannot shorten on their own (a SHA-256 stream)."""
    out = bytearray()
    while len(out) < n:
        out += hashlib.sha256(len(out).to_bytes(4, "big") + n.to_bytes(4, "big")).digest()
    return bytes(out[:n])


LONG_DISTANCE = [_block(n) * 2 for n in (700, 5000, 17000)]


def _roundtrip(sender: PerMessageDeflate, receiver: PerMessageDeflate, messages: list[bytes], who: str) -> None:
    for message in messages:
        half = len(message) // 2
        first, rsv1 = sender.encode(1 if message[:1] != b"\0" else 2, message[:half], False)
        _require(rsv1, "first frame of a compressed message without RSV1")
        second, rsv1 = sender.encode(0, message[half:], True)
        _require(not rsv1, "continuation frame with RSV1")
        try:
            got = receiver.decode(first, False, 0, None)
            got += receiver.decode(second, True, len(got), None)
        except ProtocolError as exc:
            raise Violation(f"{who}: the peer cannot inflate what was agreed: {exc}") from None
        _require(got == message, f"{who}: message changed on the way")


def check_deflate(data: bytes) -> None:
    """Fuzzed offers to the server, fuzzed answers to the client, and a fastws client and
    server with fuzzed settings that must agree and understand each other."""
    client_settings = deflate_settings(data[0:3])
    server_settings = deflate_settings(data[3:6])
    text = data[6:].decode("latin-1")
    values = text.split("\n") if text else []

    # Server: never raises; an answer is a valid one to one of the offers and matches the codec.
    negotiate = server_extension_factory(server_settings)
    assert negotiate is not None
    header, ext = negotiate(values)
    _require((header is None) == (ext is None), "answer without codec or codec without answer")
    if header is not None:
        _check_deflate_answer([header], ext)
        _require(_answers_an_offer(_params(header), parse_extensions(values)), f"{header!r} answers no offer in {values!r}")
        _require(ext.compress_bits <= server_settings.window_bits, "compress window above the server's setting")

    # Client: InvalidResponse or a codec within bounds that honours the answer.
    client = ClientDeflate(client_settings)
    try:
        agreed = client.accept(values)
    except InvalidResponse:
        agreed = None
    else:
        _require((agreed is None) == (not values), "no codec for a non-empty answer")
    if agreed is not None:
        _check_codec_bounds(agreed)
        params = _params(", ".join(values))
        _require(agreed.compress_bits <= client_settings.window_bits, "client compress window above its setting")
        if params.get("client_max_window_bits"):
            _require(agreed.compress_bits <= int(params["client_max_window_bits"] or 0), "client ignores client_max_window_bits")
        _require(agreed.reset_decompressor == ("server_no_context_takeover" in params), "server_no_context_takeover")
        if "client_no_context_takeover" in params:
            _require(agreed.reset_compressor, "client ignores client_no_context_takeover")

    # A fastws client and a fastws server: must agree, compatibly, and talk.
    client = ClientDeflate(client_settings)
    header, server_ext = server_extension_factory(server_settings)([client.offer])  # type: ignore[misc]
    _require(header is not None, f"server {server_settings} declines the fastws client's offer {client.offer!r}")
    try:
        client_ext = client.accept([header])
    except InvalidResponse as exc:
        raise Violation(f"client {client_settings} rejects server {server_settings}'s answer {header!r}: {exc}") from None
    assert client_ext is not None and server_ext is not None
    _require(server_ext.compress_bits <= client_ext.decompress_bits, "server compresses with a larger window than the client inflates")
    _require(client_ext.compress_bits <= server_ext.decompress_bits, "client compresses with a larger window than the server inflates")
    _require(not server_ext.reset_decompressor or client_ext.reset_compressor, "server resets, client keeps context")
    _require(not client_ext.reset_decompressor or server_ext.reset_compressor, "client resets, server keeps context")
    messages = [m.encode("latin-1") for m in values[:4]] or [b""]
    messages += LONG_DISTANCE  # matches 700, 5000 and 17000 bytes back: a window mismatch shows
    _roundtrip(server_ext, client_ext, messages, "server to client")
    _roundtrip(client_ext, server_ext, messages, "client to server")


CHECKS: dict[str, Callable[[bytes], None]] = {
    "frames": check_frames,
    "handshake": check_handshake,
    "deflate": check_deflate,
}

# Fuzz input length limits that keep one run fast (the runner passes them as -max_len).
MAX_LEN = {"frames": 4096, "handshake": 4096, "deflate": 1024}
