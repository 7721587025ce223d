"""Differential tests: the compiled hot path (``fastws._speedups``) against its
pure-Python twin (``fastws._pure``), which is the reference.

Both modules are imported directly, whatever ``FASTWS_EXTENSION`` says, so the
comparison also runs in the pure-Python pass of the suite. The compiled module
is mandatory here: a differential test with one side missing proves nothing, so
an unbuilt extension is a collection error, not a skip (CI always builds it;
locally run ``python setup.py build_ext --inplace``). Only a deliberate
``--ignore tests/test_differential.py`` leaves these tests out on a machine
without a compiler.

Where ``tests/test_kernels.py`` checks each implementation against a hand-written
reference, this file checks that the two implementations agree on everything
observable, including how and when they reject input: random payloads, masks,
chunkings and frame streams (valid and corrupted), compared call by call.
"""

from __future__ import annotations

import array
import functools
import importlib
import inspect
import os
import random
import struct
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import fastws._pure as PY
from _twins import feed_buffered, recorder
from _wsutil import parse_frames, xor_mask
from fastws import _rules
from fastws.exceptions import ConnectionClosed, ProtocolError
from fastws.frames import Opcode
from fastws.metrics import CORE_COUNTERS

try:
    C = importlib.import_module("fastws._speedups")
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "tests/test_differential.py needs the compiled extension fastws._speedups "
        "(build it: python setup.py build_ext --inplace, or pip install .)"
    ) from exc

def fuzz(examples: int) -> settings:
    """Bounded runs: no per-example deadline (the 16 MiB and 64 KiB cases are slow in pure
    Python), a fixed number of examples so the whole file stays near 20 s."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

# Sizes where framing or a kernel changes strategy: length encodings, SIMD widths +-1.
SMALL_SIZES = list(range(0, 17)) + [31, 32, 33, 63, 64, 65, 125, 126, 127, 128]
LARGE_SIZES = [65535, 65536, 65537]
SIMD_EDGES = [15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """A call's result or the type of the exception it raised (messages may differ)."""
    try:
        return "ok", fn()
    except Exception as exc:  # noqa: BLE001 - any exception is an observable outcome
        return "raised", type(exc).__name__


# -- text generation ------------------------------------------------------------------------

# One code point range per UTF-8 length (surrogates excluded from the 3-byte range).
_RANGES = {1: [(0x20, 0x7E)], 2: [(0x80, 0x7FF)], 3: [(0x800, 0xD7FF), (0xE000, 0xFFFF)], 4: [(0x10000, 0x10FFFF)]}

# Sequences that are never valid UTF-8 wherever they appear (truncations are
# followed by ASCII so they cannot be completed by what comes next).
BAD_SEQUENCES = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xbf",
    b"\xc0\xaf",
    b"\xc1\xbf",
    b"\xe0\x80\xaf",
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xc3a",
    b"\xe2\x82a",
    b"\xf0\x9f\x98a",
    b"\xe2a\x82",
]


def _random_text(rng: random.Random, size: int, mix: str) -> bytes:
    """Valid UTF-8 of exactly ``size`` bytes, one random character at a time (slow)."""
    out = bytearray()
    while len(out) < size:
        room = size - len(out)
        width = 1 if mix == "ascii" else rng.choice([w for w in (1, 1, 2, 3, 4) if w <= room])
        lo, hi = rng.choice(_RANGES[width])
        out += chr(rng.randint(lo, hi)).encode()
    return bytes(out)


_POOL = {mix: _random_text(random.Random(mix), 2**18, mix) for mix in ("ascii", "mixed")}


def make_text(rng: random.Random, size: int, mix: str = "mixed") -> bytes:
    """Valid UTF-8 of exactly ``size`` bytes: ASCII only, or 1- to 4-byte characters mixed.

    Short texts are drawn character by character; long ones are cut from a
    precomputed pool (tiled when needed) at a random character boundary and
    finished with random characters, so a 16 MiB text costs milliseconds."""
    if size <= 256:
        return _random_text(rng, size, mix)
    pool = _POOL[mix]
    start = rng.randrange(len(pool) // 2)
    while (pool[start] & 0xC0) == 0x80:
        start += 1
    body = (pool[start:] + pool * (size // len(pool) + 1))[: size - 8]
    end = len(body)
    while end and (body[end - 1] & 0xC0) == 0x80:
        end -= 1
    if end and body[end - 1] >= 0xC0:
        end -= 1  # a lead byte whose continuation bytes were cut off
    body = body[:end]
    return body + _random_text(rng, size - len(body), mix)


def inject(rng: random.Random, text: bytes, where: int, bad: bytes) -> bytes:
    """``bad`` inserted at the first character boundary at or after ``where``."""
    i = min(max(where, 0), len(text))
    while i < len(text) and (text[i] & 0xC0) == 0x80:
        i += 1
    return text[:i] + bad + text[i:]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (taken modulo len + 1, duplicates allowed: empty chunks)."""
    pts = sorted(p % (len(data) + 1) for p in points)
    return [data[a:b] for a, b in zip([0] + pts, pts + [len(data)], strict=True)]


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    """Valid or broken UTF-8, often with the break right at a SIMD block edge."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    size = draw(st.one_of(st.integers(0, 300), st.sampled_from(SMALL_SIZES + SIMD_EDGES + [1000, 4096, 4097])))
    text = make_text(rng, size, draw(st.sampled_from(["ascii", "mixed"])))
    mode = draw(st.sampled_from(["valid", "inject", "inject", "truncate", "random"]))
    if mode == "inject":
        where = draw(st.one_of(st.sampled_from(SIMD_EDGES + [0, 1, 2, 3]), st.integers(0, max(size, 1))))
        text = inject(rng, text, where + draw(st.integers(-4, 4)), draw(st.sampled_from(BAD_SEQUENCES)))
    elif mode == "truncate" and text:
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif mode == "random":
        text = draw(st.binary(max_size=200))
    return text


# -- apply_mask ------------------------------------------------------------------------------

BUFFER_KINDS: dict[str, Callable[[bytes], Any]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "unaligned memoryview": lambda b: memoryview(b"\x00\x01\x02" + b)[3:],
    "memoryview of bytearray": lambda b: memoryview(bytearray(b)),
}


@pytest.mark.parametrize("size", SMALL_SIZES + LARGE_SIZES)
@pytest.mark.parametrize("kind", list(BUFFER_KINDS))
def test_apply_mask_boundary_sizes(size: int, kind: str) -> None:
    data = os.urandom(size)
    key = os.urandom(4)
    wrap = BUFFER_KINDS[kind]
    py, c = PY.apply_mask(wrap(data), wrap(key)), C.apply_mask(wrap(data), wrap(key))
    assert type(py) is type(c) is bytes
    assert py == c


@fuzz(300)
@given(
    data=st.one_of(st.binary(max_size=600), st.sampled_from(SIMD_EDGES).flatmap(lambda n: st.binary(min_size=n, max_size=n))),
    key=st.binary(min_size=4, max_size=4),
    kind=st.sampled_from(list(BUFFER_KINDS)),
    offset=st.integers(0, 600),
)
def test_apply_mask_random(data: bytes, key: bytes, kind: str, offset: int) -> None:
    wrap = BUFFER_KINDS[kind]
    py = PY.apply_mask(wrap(data), key)
    assert C.apply_mask(wrap(data), key) == py
    # Resuming in the middle of a frame with the key rotated: the parsers' way.
    offset %= len(data) + 1
    r = offset & 3
    rotated = key[r:] + key[:r]
    assert C.apply_mask(data[:offset], key) + C.apply_mask(wrap(data[offset:]), rotated) == py


@pytest.mark.parametrize(
    "data, key",
    [
        (b"data", b""),
        (b"data", b"abc"),
        (b"data", b"abcde"),
        (b"", b"abcde"),
        ("text", b"abcd"),
        (b"data", "abcd"),
        (None, b"abcd"),
        (12345, b"abcd"),
    ],
)
def test_apply_mask_rejects_the_same_inputs(data: Any, key: Any) -> None:
    py = outcome(lambda: PY.apply_mask(data, key))
    assert py[0] == "raised"
    assert outcome(lambda: C.apply_mask(data, key)) == py


# -- Utf8Validator -----------------------------------------------------------------------------


def run_validator(mod: Any, chunks: list[Any], final: bool = True) -> list[bool]:
    v = mod.Utf8Validator()
    results = [v.validate(chunk) for chunk in chunks]
    if final:
        results.append(v.validate(b"", True))
    return results


@fuzz(400)
@given(data=texts(), points=st.lists(st.integers(0, 10_000), max_size=8), kind=st.sampled_from(list(BUFFER_KINDS)))
@example(data=b"a" * 63 + b"\xe2\x82\xac", points=[64], kind="bytes")
@example(data=b"a" * 31 + b"\xf0\x9f\x98\x80" + b"a" * 40, points=[33], kind="memoryview")
@example(data=b"a" * 64 + b"\xed\xa0\x80", points=[], kind="bytes")
def test_utf8_random_chunkings(data: bytes, points: list[int], kind: str) -> None:
    chunks = [BUFFER_KINDS[kind](c) for c in cut(data, points)]
    py = run_validator(PY, chunks)
    assert run_validator(C, chunks) == py
    try:
        data.decode("utf-8")
        assert py[-1] is True
    except UnicodeDecodeError:
        assert py[-1] is False


@fuzz(150)
@given(data=texts().filter(lambda t: len(t) <= 80))
def test_utf8_every_split_point_and_byte_by_byte(data: bytes) -> None:
    for i in range(len(data) + 1):
        chunks = [data[:i], data[i:]]
        assert run_validator(C, chunks) == run_validator(PY, chunks), i
        # Without the final call: a truncated sequence at the end is still fine.
        assert run_validator(C, chunks, final=False) == run_validator(PY, chunks, final=False), i
    single = [data[i : i + 1] for i in range(len(data))]
    assert run_validator(C, single) == run_validator(PY, single)


@pytest.mark.parametrize("edge", SIMD_EDGES + [255, 256, 257, 4095, 4096, 4097])
@pytest.mark.parametrize("bad", BAD_SEQUENCES)
def test_utf8_error_at_every_offset_around_a_block_edge(edge: int, bad: bytes) -> None:
    """Errors in ASCII and in multi-byte text, a few bytes either side of a vector block edge."""
    rng = random.Random(edge * 31 + len(bad))
    for base in (b"a" * (edge + 80), make_text(rng, edge + 80)):
        for delta in range(-5, 6):
            data = inject(rng, base, edge + delta, bad)
            for chunks in ([data], cut(data, [edge]), cut(data, [edge - 1, edge + 1])):
                assert run_validator(C, chunks) == run_validator(PY, chunks), (delta, chunks)


def test_utf8_validator_reuse_after_reset_and_sticky_failure() -> None:
    steps: list[tuple[str, Any]] = [
        ("validate", (b"ok \xe2\x82", False)),
        ("reset", None),
        ("validate", (b"\xac", False)),  # the reset dropped the open sequence
        ("validate", (b"fine", True)),  # failure is sticky
        ("reset", None),
        ("validate", ("😀".encode() * 40, True)),
        ("validate", (b"", True)),
        ("validate", (bytearray(b"\xf0\x9f"), False)),
        ("validate", (memoryview(b"\x98\x80abc"), True)),
    ]
    seen: dict[str, list[Any]] = {}
    for name, mod in (("py", PY), ("c", C)):
        v = mod.Utf8Validator()
        out = seen[name] = []
        for op, args in steps:
            out.append(v.reset() if op == "reset" else v.validate(*args))
    assert seen["py"] == seen["c"]


@pytest.mark.parametrize("chunk", ["text", None, 42])
def test_utf8_rejects_the_same_inputs(chunk: Any) -> None:
    py = outcome(lambda: PY.Utf8Validator().validate(chunk))
    assert py[0] == "raised"
    assert outcome(lambda: C.Utf8Validator().validate(chunk)) == py


# -- frame_header / encode_frame -----------------------------------------------------------------


def unmask_frame(frame: bytes) -> tuple[bytes, bytes]:
    """(header with the mask bit cleared, unmasked payload) of one encoded frame."""
    frames, rest = parse_frames(frame)
    assert rest == b"" and len(frames) == 1
    f = frames[0]
    hlen = len(frame) - len(f.payload) - (4 if f.masked else 0)
    header = bytes([frame[0], frame[1] & 0x7F]) + frame[2:hlen]
    return header, f.payload


@fuzz(300)
@given(
    opcode=st.integers(0, 15),
    length=st.one_of(st.integers(0, 70000), st.sampled_from(SMALL_SIZES + LARGE_SIZES + [2**32, 2**63 - 1])),
    fin=st.booleans(),
    rsv1=st.booleans(),
    masked=st.booleans(),
)
def test_frame_header(opcode: int, length: int, fin: bool, rsv1: bool, masked: bool) -> None:
    assert C.frame_header(opcode, length, fin, rsv1, masked) == PY.frame_header(opcode, length, fin, rsv1, masked)
    assert C.frame_header(opcode, length) == PY.frame_header(opcode, length)


@pytest.mark.parametrize(
    "opcode, length",
    [(1, -1), (1, -126), (2, 2**63), (2, 2**64), (16, 0), (-1, 0), (256, 5), (1, "5"), (1, None)],
)
def test_frame_header_rejects_the_same_inputs(opcode: Any, length: Any) -> None:
    py = outcome(lambda: PY.frame_header(opcode, length))
    assert py[0] == "raised", py
    assert outcome(lambda: C.frame_header(opcode, length)) == py


@fuzz(200)
@given(
    opcode=st.sampled_from([0, 1, 2, 8, 9, 10]),
    payload=st.one_of(st.binary(max_size=300), st.sampled_from(SMALL_SIZES + LARGE_SIZES).map(lambda n: os.urandom(n))),
    fin=st.booleans(),
    rsv1=st.booleans(),
    kind=st.sampled_from(list(BUFFER_KINDS)),
)
def test_encode_frame(opcode: int, payload: bytes, fin: bool, rsv1: bool, kind: str) -> None:
    wrap = BUFFER_KINDS[kind]
    unmasked = PY.encode_frame(opcode, wrap(payload), fin, rsv1)
    assert C.encode_frame(opcode, wrap(payload), fin, rsv1) == unmasked
    # Client frames: fresh random keys, so compare what the peer sees after unmasking.
    py_masked = PY.encode_frame(opcode, wrap(payload), fin, rsv1, True)
    c_masked = C.encode_frame(opcode, wrap(payload), fin, rsv1, True)
    assert py_masked[1] & 0x80 and c_masked[1] & 0x80 and len(c_masked) == len(py_masked) == len(unmasked) + 4
    assert unmask_frame(c_masked) == unmask_frame(py_masked) == unmask_frame(unmasked)


@pytest.mark.parametrize("opcode, payload", [(1, "text"), (2, None), (2, 7), (16, b"x"), (300, b"x"), (-1, b"")])
def test_encode_frame_rejects_the_same_inputs(opcode: int, payload: Any) -> None:
    for mask in (False, True):
        py = outcome(functools.partial(PY.encode_frame, opcode, payload, True, False, mask))
        assert py[0] == "raised", py
        assert outcome(functools.partial(C.encode_frame, opcode, payload, True, False, mask)) == py


# -- ProtocolCore ------------------------------------------------------------------------------


class IdentityExtension:
    """Stands in for permessage-deflate: 'decompresses' to the same bytes, records each call."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def decode(self, data: bytes, fin: bool, size: int, max_size: int | None) -> bytes:
        self.log.append(("decode", bytes(data), fin, size, max_size))
        return bytes(data)

    def encode(self, opcode: int, payload: Any, fin: bool) -> tuple[Any, bool]:  # pragma: no cover - unused
        return payload, False


RECORDERS = {"py": recorder(PY), "c": recorder(C)}

COUNTERS = CORE_COUNTERS  # the names both twins keep, as fastws.metrics reads them


def counters(core: Any) -> dict[str, int]:
    """The message counters of a core (fastws.metrics reads them)."""
    return {name: getattr(core, name) for name in COUNTERS}


def written(data: bytes, client: bool) -> tuple[Any, ...]:
    """A write as the peer sees it: frames unmasked (client keys are random)."""
    frames, rest = parse_frames(bytes(data))
    assert rest == b""
    assert all(f.masked == client for f in frames)
    return tuple(("write", f.fin, f.rsv, f.opcode, f.payload) for f in frames)


def run_core(
    which: str,
    chunks: list[bytes],
    *,
    client: bool,
    max_size: int | None = 2**20,
    max_fragments: int | None = None,
    extension: bool = False,
    feed: str = "bytes",
) -> list[Any]:
    """Feed ``chunks`` to one twin; return everything it did, in order."""
    log: list[Any] = []
    core = RECORDERS[which](client, max_size=max_size, max_fragments=max_fragments, extension=IdentityExtension(log) if extension else None)
    core.log = log
    core._write = lambda data: log.append(written(data, client))
    core._on_message = lambda c, data, is_text: log.append(("message", type(data).__name__, bytes(data), is_text))
    for i, chunk in enumerate(chunks):
        if feed == "buffer" and which == "c":
            feed_buffered(core, chunk)
        else:
            core.receive_data(BUFFER_KINDS["memoryview" if feed == "memoryview" else "bytearray" if feed == "bytearray" else "bytes"](chunk))
        log.append(("end of chunk", i))
    log.append(("counters", counters(core)))
    f = core.failure
    log.append(
        (
            "final",
            core.state,
            core.close_code,
            core.close_reason,
            core.close_sent,
            core.close_received,
            None if f is None else (type(f).__name__, f.code, str(f)),
        )
    )
    return log


def assert_same(chunks: list[bytes], **options: Any) -> list[Any]:
    py = run_core("py", chunks, **options)
    c = run_core("c", chunks, **options)
    if c != py:
        for i, (a, b) in enumerate(zip(py, c, strict=False)):
            assert a == b, f"first difference at event {i} (options {options})"
    assert c == py
    return py


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    key: bytes = b"\x37\xfa\x21\x3d",
    form: int | None = None,
    length: int | None = None,
) -> bytes:
    """A frame with any length form (7-bit, 16-bit, 64-bit, even when not minimal)."""
    n = len(payload) if length is None else length
    if form is None:
        form = 0 if n < 126 else 1 if n < 65536 else 2
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if masked else 0
    if form == 0:
        head = bytes([b0, m | n])
    elif form == 1:
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if masked:
        return head + key + xor_mask(payload, key) if len(payload) < 4096 else head + key + PY.apply_mask(payload, key)
    return head + payload


CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
               0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]


@st.composite
def frame_streams(draw: st.DrawFn, client: bool) -> tuple[bytes, bool]:
    """A stream of frames as a peer of the ``client`` role would send it, possibly
    broken: messages fragmented at random with control frames in between, close
    frames with any code and reason, then random corruptions of headers or payloads."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    extension = draw(st.integers(0, 4)) == 0
    masked = not client
    out: list[bytes] = []

    def key() -> bytes:
        return draw(st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff"])) if draw(st.integers(0, 9)) == 0 else rng.randbytes(4)

    def control() -> bytes:
        op = draw(st.sampled_from([9, 10]))
        return frame(op, rng.randbytes(draw(st.sampled_from([0, 1, 4, 125]))), masked=masked, key=key())

    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["text", "text", "binary", "ping", "pong", "close"]))
        if kind in ("ping", "pong"):
            size = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 17, 124, 125, 126]))
            out.append(frame(9 if kind == "ping" else 10, rng.randbytes(size), masked=masked, key=key()))
        elif kind == "close":
            shape = draw(st.sampled_from(["empty", "one byte", "code", "code+reason", "bad reason", "long"]))
            code = struct.pack("!H", draw(st.sampled_from(CLOSE_CODES)))
            payload = {
                "empty": b"",
                "one byte": code[:1],
                "code": code,
                "code+reason": code + make_text(rng, draw(st.integers(0, 123))),
                "bad reason": code + inject(rng, make_text(rng, 20), draw(st.integers(0, 20)), draw(st.sampled_from(BAD_SEQUENCES))),
                "long": code + b"r" * 124,
            }[shape]
            out.append(frame(8, payload, masked=masked, key=key()))
        else:
            size = draw(st.one_of(st.integers(0, 200), st.sampled_from(SMALL_SIZES + SIMD_EDGES), st.sampled_from(LARGE_SIZES + [70000])))
            if kind == "text":
                payload = make_text(rng, size, draw(st.sampled_from(["ascii", "mixed"])))
                if draw(st.integers(0, 3)) == 0:
                    payload = inject(rng, payload, draw(st.integers(0, max(size, 1))), draw(st.sampled_from(BAD_SEQUENCES)))
            else:
                payload = rng.randbytes(size)
            pieces = cut(payload, draw(st.lists(st.integers(0, 2**20), max_size=4)))
            rsv1 = extension and draw(st.booleans())
            for j, piece in enumerate(pieces):
                last = j == len(pieces) - 1
                form = None if draw(st.integers(0, 7)) else draw(st.sampled_from([0, 1, 2]))
                if form == 0 and len(piece) > 125:
                    form = None
                if form == 1 and len(piece) > 65535:
                    form = None
                out.append(
                    frame(1 if kind == "text" and j == 0 else 2 if j == 0 else 0, piece, fin=last,
                          rsv=4 if rsv1 and j == 0 else 0, masked=masked, key=key(), form=form)
                )
                if not last and draw(st.integers(0, 3)) == 0:
                    out.append(control())
    # Corruptions, in the structure (one frame) or anywhere in the bytes.
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        if not out:
            break
        i = draw(st.integers(0, len(out) - 1))
        f = bytearray(out[i])
        if len(f) < 2:
            continue  # dropped by an earlier corruption
        how = draw(st.sampled_from(["byte0", "byte1", "opcode", "length", "msb length", "payload", "drop", "duplicate"]))
        if how == "byte0":
            f[0] ^= 1 << draw(st.integers(0, 7))
        elif how == "byte1":
            f[1] ^= 1 << draw(st.integers(0, 7))
        elif how == "opcode":
            f[0] = (f[0] & 0xF0) | draw(st.integers(0, 15))
        elif how == "length":
            f[1] = (f[1] & 0x80) | draw(st.integers(0, 127))
        elif how == "msb length":
            f[0:2] = bytes([f[0], (f[1] & 0x80) | 127]) + struct.pack("!Q", draw(st.sampled_from([2**63, 2**64 - 1, 2**31])))
        elif how == "payload" and len(f) > 2:
            f[draw(st.integers(2, len(f) - 1))] = draw(st.integers(0, 255))
        elif how == "drop":
            f = bytearray()
        elif how == "duplicate":
            f = f + f
        out[i] = bytes(f)
    return b"".join(out), extension


@fuzz(250)
@given(
    client=st.booleans(),
    stream_data=st.data(),
    chunking=st.sampled_from(["random", "random", "random", "one", "bytes"]),
    points=st.lists(st.integers(0, 2**20), max_size=10),
    max_size=st.sampled_from([2**20, None, 0, 1, 125, 126, 200, 65536]),
    max_fragments=st.sampled_from([None, None, 1, 2, 3]),
    feed=st.sampled_from(["bytes", "bytearray", "memoryview", "buffer"]),
)
def test_protocol_core_frame_streams(
    client: bool, stream_data: st.DataObject, chunking: str, points: list[int], max_size: int | None,
    max_fragments: int | None, feed: str,
) -> None:
    stream, extension = stream_data.draw(frame_streams(client))
    if chunking == "one":
        chunks = [stream]
    elif chunking == "bytes" and len(stream) <= 3000:
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    else:
        chunks = cut(stream, points)
    assert_same(chunks, client=client, max_size=max_size, max_fragments=max_fragments, extension=extension, feed=feed)


def _small_streams() -> dict[str, bytes]:
    """Short streams that exercise one rule each, for the every-split-point test."""
    k = b"\x01\x02\x03\x04"
    euro = "€".encode()
    return {
        "fragmented text, ping inside": (
            frame(1, b"h\xc3", fin=False, key=k)
            + frame(9, b"p", key=k)
            + frame(0, b"\xa9llo " + euro[:1], fin=False, key=k)
            + frame(0, euro[1:], key=k)
        ),
        "invalid UTF-8 in the 2nd fragment": frame(1, b"ok", fin=False, key=k) + frame(0, b"a\xed\xa0\x80b", key=k) + frame(2, b"never", key=k),
        "text ends inside a character": frame(1, b"abc\xe2\x82", key=k) + frame(9, b"", key=k),
        "binary, pong, close 1000": (
            frame(2, bytes(range(20)), key=k) + frame(10, b"pong", key=k) + frame(8, b"\x03\xe8bye", key=k) + frame(2, b"after", key=k)
        ),
        "close with bad code": frame(8, b"\x03\xedx", key=k),
        "close with one byte": frame(8, b"\x03", key=k),
        "close with bad reason": frame(8, b"\x03\xe8\xff", key=k),
        "unmasked frame from client": frame(2, b"abc", masked=False),
        "reserved opcode": frame(2, b"a", key=k) + frame(3, b"b", key=k),
        "RSV2": frame(1, b"a", rsv=2, key=k),
        "RSV1 without extension": frame(1, b"a", rsv=4, key=k),
        "fragmented ping": frame(9, b"a", fin=False, key=k),
        "long ping (16-bit length)": frame(9, b"x" * 126, key=k),
        "continuation with nothing to continue": frame(0, b"a", key=k),
        "new message inside a fragmented one": frame(1, b"a", fin=False, key=k) + frame(2, b"b", key=k),
        "64-bit length with the MSB set": frame(2, b"", key=k, form=2, length=2**63),
        "non-minimal lengths": frame(2, b"ab", key=k, form=1) + frame(1, b"cd", key=k, form=2) + frame(9, b"", key=k, form=1),
        "empty frames": frame(1, b"", fin=False, key=k) + frame(0, b"", fin=False, key=k) + frame(0, b"", key=k) + frame(2, b"", key=k),
        "too big for max_size=8": frame(2, b"0123", fin=False, key=k) + frame(0, b"45678", key=k),
    }


@pytest.mark.parametrize("name", list(_small_streams()))
def test_protocol_core_every_split_point(name: str) -> None:
    stream = _small_streams()[name]
    max_size = 8 if "max_size" in name else 2**20
    assert_same([stream], client=False, max_size=max_size)
    assert_same([stream[i : i + 1] for i in range(len(stream))], client=False, max_size=max_size)
    for i in range(len(stream) + 1):
        assert_same([stream[:i], stream[i:]], client=False, max_size=max_size)
    for i in range(0, len(stream) + 1, 3):
        for j in range(i, len(stream) + 1, 5):
            assert_same([stream[:i], stream[i:j], stream[j:]], client=False, max_size=max_size, feed="buffer")


@pytest.mark.parametrize("client", [False, True])
def test_protocol_core_boundary_lengths(client: bool) -> None:
    """Every boundary size as a text, a binary and a control frame, in each length form that fits."""
    rng = random.Random(6455)
    stream = bytearray()
    for size in SMALL_SIZES + SIMD_EDGES + LARGE_SIZES:
        text = make_text(rng, size)
        for form in (0, 1, 2):
            if (form == 0 and size > 125) or (form == 1 and size > 65535):
                continue
            stream += frame(1, text, masked=not client, form=form, key=rng.randbytes(4))
            stream += frame(2, rng.randbytes(size), masked=not client, form=form, key=rng.randbytes(4))
        if size <= 125:
            stream += frame(9, rng.randbytes(size), masked=not client, key=rng.randbytes(4))
    stream = bytes(stream)
    for chunks in ([stream], cut(stream, [rng.randrange(len(stream)) for _ in range(40)])):
        log = assert_same(chunks, client=client, max_size=None)
        assert sum(1 for e in log if e[0] == "message") > 2 * len(SMALL_SIZES)


@pytest.mark.parametrize("corrupt", [False, True])
def test_protocol_core_16_mib_text_message(corrupt: bool) -> None:
    """A 16 MiB text message in three fragments, arriving in odd-sized chunks; optionally
    with invalid UTF-8 a few bytes before its end (both must fail at the same chunk)."""
    rng = random.Random(16)
    text = make_text(rng, 16 * 2**20)
    if corrupt:
        i = len(text) - 37
        while (text[i] & 0xC0) == 0x80:
            i -= 1
        text = text[:i] + b"\xed\xa0\x80" + text[i + 3 :]
    a, b = 5 * 2**20 + 3, 11 * 2**20 - 1
    stream = (
        frame(1, text[:a], fin=False, key=b"\x9a\x0b\x5c\xe1")
        + frame(10, b"mid", key=b"\x01\x02\x03\x04")
        + frame(0, text[a:b], fin=False, key=b"\xf0\x0f\x55\xaa")
        + frame(0, text[b:], key=b"\x12\x34\x56\x78")
    )
    chunks = cut(stream, list(range(0, len(stream), 2**20 + 7)))
    log = assert_same(chunks, client=False, max_size=None)
    messages = [e for e in log if e[0] == "message"]
    if corrupt:
        assert messages == [] and log[-1][-1][1] == 1007
    else:
        assert len(messages) == 1 and messages[0][2] == text


# -- the send side, closing, options and argument errors -------------------------------------
#
# What the application calls on a core, compared call by call: the frames each call writes
# (unmasked: client keys are random), the exception it raises (type, message and close code),
# every callback, and the state and closed_error() at the end.

def test_the_cold_rules_are_one_source() -> None:
    """Both ProtocolCore classes run fastws/_rules.py's CoreRules: the pure one inherits it,
    the compiled one lists the same functions compiled (fastws._rules_c, built from that file)."""
    from fastws import _rules_c  # type: ignore[attr-defined]

    assert not _rules_c.__file__.endswith(".py"), "fastws._rules_c is not compiled"
    assert _rules_c.RULES == _rules.RULES
    for name in _rules.RULES:
        rule = _rules.CoreRules.__dict__[name]
        assert PY.ProtocolCore.__dict__.get(name, rule) is rule, f"fastws._pure.ProtocolCore overrides {name}"
        assert getattr(PY.ProtocolCore, name) is rule, name
        compiled = _rules_c.CoreRules.__dict__[name]
        assert C.ProtocolCore.__dict__[name] is compiled, f"the compiled ProtocolCore does not use CoreRules.{name}"
        # (Python 3.13 dedents docstrings when it compiles them; Cython keeps them as written.)
        assert compiled.__qualname__ == rule.__qualname__, name
        assert inspect.cleandoc(compiled.__doc__ or "") == inspect.cleandoc(rule.__doc__ or ""), name
    assert (C.OPEN, C.CLOSING, C.CLOSED) == (PY.OPEN, PY.CLOSING, PY.CLOSED) == (_rules.OPEN, _rules.CLOSING, _rules.CLOSED)


def raised(exc: BaseException) -> tuple[Any, ...]:
    return ("raised", type(exc).__name__, str(exc), getattr(exc, "code", None))


class SendExtension(IdentityExtension):
    """Records what the core asks it to compress; compresses nothing (RSV1 stays clear)."""

    def encode(self, opcode: int, payload: Any, fin: bool) -> tuple[Any, bool]:
        self.log.append(("encode", opcode, bytes(payload), fin))
        return payload, False


def run_ops(which: str, ops: list[tuple[Any, ...]], *, client: bool, extension: bool = False, **options: Any) -> list[Any]:
    """Apply ``ops`` (method name and arguments, or ("receive", bytes)) to one twin; everything observable."""
    log: list[Any] = []
    try:
        core = RECORDERS[which](client, extension=SendExtension(log) if extension else None, **options)
    except Exception as exc:  # noqa: BLE001 - the outcome is the point
        return [("constructor", raised(exc))]
    core.log = log
    out: list[Any] = []
    core._write = out.append
    core._on_message = lambda c, data, is_text: log.append(("message", bytes(data), is_text))
    log.append(("options", core.client, core.max_size, core.max_fragments, core.state))
    for op in ops:
        name, args = op[0], op[1:]
        try:
            if name == "receive":
                core.receive_data(args[0])
            elif name == "fail":
                core.fail(ProtocolError(*args))
            else:
                getattr(core, name)(*args)
            result: tuple[Any, ...] = ("ok",)
        except Exception as exc:  # noqa: BLE001
            result = raised(exc)
        log.append((name, result, written(b"".join(bytes(part) for part in out), bool(client))))
        out.clear()
    log.append(("counters", counters(core)))
    f = core.failure
    log.append(
        (
            "final",
            core.state,
            core.close_code,
            core.close_reason,
            core.close_sent,
            core.close_received,
            core.writing_paused,
            None if f is None else (type(f).__name__, f.code, str(f)),
            raised(core.closed_error()),
        )
    )
    return log


def assert_same_ops(ops: list[tuple[Any, ...]], **options: Any) -> list[Any]:
    py = run_ops("py", ops, **options)
    c = run_ops("c", ops, **options)
    for i, (a, b) in enumerate(zip(py, c, strict=False)):
        assert a == b, f"first difference at event {i} (ops {ops}, options {options})"
    assert c == py
    return py


LIMITS = [None, 0, 1, 125, 2**20, sys.maxsize, sys.maxsize + 1, -1, -(2**70), 2**70, 1.5, "10", True, False, b"1"]


@pytest.mark.parametrize("client", [False, True, 0, 1, "", "yes"])
@pytest.mark.parametrize("max_size", LIMITS)
def test_constructor_max_size(client: Any, max_size: Any) -> None:
    assert_same_ops([("send", b"x")], client=client, max_size=max_size)


@pytest.mark.parametrize("max_fragments", LIMITS)
def test_constructor_max_fragments(max_fragments: Any) -> None:
    assert_same_ops([], client=False, max_fragments=max_fragments)


@pytest.mark.parametrize("value", LIMITS)
@pytest.mark.parametrize("name", ["max_size", "max_fragments"])
def test_setting_a_limit_later(name: str, value: Any) -> None:
    outcomes = []
    for mod in (PY, C):
        core = mod.ProtocolCore(False)
        try:
            setattr(core, name, value)
            outcomes.append(("ok", getattr(core, name)))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(raised(exc))
    assert outcomes[0] == outcomes[1]


def test_max_size_minus_one_is_refused_with_a_clear_message() -> None:
    for mod in (PY, C):
        with pytest.raises(ValueError, match=r"max_size must be None \(no limit\) or an int from 0"):
            mod.ProtocolCore(False, max_size=-1)


PAYLOADS: dict[str, Callable[[bytes], Any]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "memoryview slice": lambda b: memoryview(b"..." + b)[3:],
    "array of int32": lambda b: array.array("i", b[: len(b) // 4 * 4]),
    "str": lambda b: b.decode("latin-1"),
}
SEND_SIZES = [0, 1, 125, 126, 16383, 16384, 65536]


@pytest.mark.parametrize("extension", [False, True])
@pytest.mark.parametrize("client", [False, True])
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_send_writes_the_same_frames(kind: str, client: bool, extension: bool) -> None:
    ops: list[tuple[Any, ...]] = []
    for size in SEND_SIZES:
        payload = PAYLOADS[kind](bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
        ops += [("send", payload), ("send", payload, True), ("send", payload, False), ("send", payload, None)]
        ops += [("send_frame", Opcode.TEXT, payload, False), ("send_frame", 0, payload, True), ("send_frame", 2, payload)]
    ops += [("send", "ascii"), ("send", "é€😀"), ("send", "\ud800"), ("send", 12), ("send", None), ("send", [1, 2])]
    assert_same_ops(ops, client=client, extension=extension)


OPCODES = [-1, 0, 1, 2, 3, 7, 8, 9, 10, 11, 15, 16, 256, 2**70, "1", 1.0, True, None, Opcode.TEXT, Opcode.PING]


@pytest.mark.parametrize("client", [False, True])
@pytest.mark.parametrize("opcode", OPCODES)
def test_send_frame_arguments(opcode: Any, client: bool) -> None:
    ops: list[tuple[Any, ...]] = []
    for payload in [b"", b"x" * 125, b"x" * 126, bytearray(b"abc"), memoryview(b"abc"), "abc", 7, None]:
        for fin in [True, False, 0, 1]:
            ops.append(("send_frame", opcode, payload, fin))
    assert_same_ops(ops, client=client)


@pytest.mark.parametrize("client", [False, True])
@pytest.mark.parametrize("method", ["ping", "pong"])
def test_ping_pong_arguments(method: str, client: bool) -> None:
    ops: list[tuple[Any, ...]] = [(method,)]
    for payload in [b"", b"p" * 125, b"p" * 126, bytearray(b"p" * 125), memoryview(b"p" * 126), array.array("i", [1] * 31),
                    array.array("i", [1] * 32), "ping", 5, None]:
        ops.append((method, payload))
    assert_same_ops(ops, client=client)


CLOSE_ARGS = [(), (1000,), (1000, "bye"), (1001, "é" * 61), (1000, "x" * 123), (1000, "x" * 124), (1000, "é" * 62),
              (1005,), (1006,), (999,), (3000, ""), (4999, "z"), (5000,), ("1000",), (1000.0,), (True,), (None,),
              (1000, b"bye"), (1000, None), (1000, 7), (Opcode.PING,)]


@pytest.mark.parametrize("client", [False, True])
@pytest.mark.parametrize("args", CLOSE_ARGS)
def test_close_arguments_and_closing_twice(args: tuple[Any, ...], client: bool) -> None:
    # Then close again, and send after close: the same exception and close code.
    assert_same_ops([("close", *args), ("close", *args), ("close",), ("send", b"late"), ("ping",), ("send_frame", 2, b"x")],
                    client=client)


def _peer(client: bool) -> Callable[..., bytes]:
    """Frames as this core's peer sends them (masked towards a server)."""
    return lambda opcode, payload=b"", **kw: frame(opcode, payload, masked=not client, **kw)


SEQUENCES: dict[str, Callable[[Callable[..., bytes]], list[tuple[Any, ...]]]] = {
    "close, peer answers, send": lambda f: [("close", 3001, "bye"), ("receive", f(8, b"\x0b\xb9ok")), ("send", b"x"), ("close",)],
    "peer closes first, send": lambda f: [("receive", f(8, b"\x03\xe8")), ("send", b"x"), ("ping", b"p"), ("close", 1000)],
    "peer closes with no status": lambda f: [("receive", f(8)), ("send", "x"), ("close",)],
    "peer closes with a bad code": lambda f: [("receive", f(8, b"\x03\xed")), ("send", "x")],
    "peer closes with bad UTF-8": lambda f: [("receive", f(8, b"\x03\xe8\xff")), ("send", "x")],
    "fail, then send and close": lambda f: [("fail", "broken", 1002), ("send", b"x"), ("close",), ("fail", "again", 1011)],
    "fail with a long reason": lambda f: [("fail", "é" * 100, 1009), ("send", b"x")],
    "fail after close": lambda f: [("close", 1001), ("fail", "late", 1011), ("send", b"x")],
    "connection lost": lambda f: [("connection_closed",), ("send", b"x"), ("close",), ("ping",)],
    "close, connection lost": lambda f: [("close", 1000), ("connection_closed",), ("send", b"x")],
    "pings while writing is paused": lambda f: [
        ("pause_writing",), ("receive", f(9, b"one")), ("receive", f(9, b"two")), ("resume_writing",), ("resume_writing",),
        ("receive", f(9, b"three")), ("receive", f(10, b"pong")),
    ],
    "pending pong, then close": lambda f: [("pause_writing",), ("receive", f(9, b"p")), ("close",), ("resume_writing",)],
    "pending pong, then peer closes": lambda f: [("pause_writing",), ("receive", f(9, b"p") + f(8, b"\x03\xe8")), ("resume_writing",)],
    "message, ping, message": lambda f: [("receive", f(1, b"a") + f(9, b"!") + f(2, b"b")), ("send", "c")],
    "protocol error": lambda f: [("receive", f(3, b"?")), ("send", b"x"), ("close",)],
    "too big": lambda f: [("receive", f(2, b"x" * 200)), ("send", b"x")],
}


@pytest.mark.parametrize("client", [False, True])
@pytest.mark.parametrize("name", list(SEQUENCES))
def test_close_and_fail_sequences(name: str, client: bool) -> None:
    assert_same_ops(SEQUENCES[name](_peer(client)), client=client, max_size=100)


@st.composite
def op_sequences(draw: st.DrawFn, client: bool) -> list[tuple[Any, ...]]:
    f = _peer(client)
    payload = st.one_of(st.binary(max_size=140), st.binary(max_size=140).map(bytearray), st.text(max_size=40))
    op = st.one_of(
        st.tuples(st.just("send"), payload),
        st.tuples(st.just("send_frame"), st.sampled_from([0, 1, 2, 3, 8, 9, 10, 16]), st.binary(max_size=130), st.booleans()),
        st.tuples(st.sampled_from(["ping", "pong"]), st.binary(max_size=130)),
        st.tuples(st.just("close"), st.sampled_from([1000, 1001, 1005, 3000, 999]), st.sampled_from(["", "bye", "x" * 124])),
        st.tuples(st.just("fail"), st.just("failed"), st.sampled_from([1002, 1007, 1009, 1011])),
        st.tuples(st.sampled_from(["pause_writing", "resume_writing", "connection_closed"])),
        st.tuples(
            st.just("receive"),
            st.one_of(
                st.binary(max_size=125).map(lambda p: f(9, p)),
                st.binary(max_size=125).map(lambda p: f(10, p)),
                st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8bye", b"\x0b\xb8", b"\x03\xed", b"\x01"]).map(lambda p: f(8, p)),
                st.binary(max_size=50).map(lambda p: f(2, p)),
            ),
        ),
    )
    return draw(st.lists(op, max_size=12))


@fuzz(300)
@given(data=st.data(), client=st.booleans())
def test_random_op_sequences(data: st.DataObject, client: bool) -> None:
    assert_same_ops(data.draw(op_sequences(client)), client=client)


@pytest.mark.parametrize("opcode", [0, 1, 2, 3, 8, 9, 10, 16, "1", None])
def test_broadcast_arguments(opcode: Any) -> None:
    outcomes = []
    for mod in (PY, C):
        outs: list[list[bytes]] = [[], []]
        cores = [mod.ProtocolCore(False), mod.ProtocolCore(True)]
        for core, out in zip(cores, outs, strict=True):
            core._write = out.append
        try:
            result: tuple[Any, ...] = ("ok", mod.broadcast(cores, opcode, b"hi"))
        except Exception as exc:  # noqa: BLE001
            result = raised(exc)
        outcomes.append((result, [written(b"".join(out), client) for out, client in zip(outs, (False, True), strict=True)],
                         [counters(core) for core in cores]))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("mod", [PY, C], ids=["py", "c"])
def test_counters_count_messages_and_payload_bytes_by_type(mod: Any) -> None:
    """The exact counts, not only the twins agreeing: delivered and framed messages, payload bytes."""
    core = mod.ProtocolCore(False)
    core._write = lambda data: None
    core._on_message = lambda c, data, is_text: None
    assert counters(core) == dict.fromkeys(COUNTERS, 0)
    f = _peer(False)
    core.receive_data(f(1, "héllo".encode()) + f(2, b"abc", fin=False) + f(9, b"ping") + f(0, b"defg"))
    core.receive_data(f(1, b"half", fin=False))  # not delivered yet: not counted
    core.send("abc")  # ASCII str: framed from the str
    core.send("é")  # 2 bytes
    core.send(b"12345")
    core.send(memoryview(array.array("i", [1, 2])))  # 8 bytes, not 2 items
    core.send_frame(1, b"ab", False)  # a text message in two frames: counted at its last one
    core.send_frame(0, b"cde")
    core.ping(b"p")
    core.pong(b"q")
    assert mod.broadcast([core], 2, bytearray(b"xy")) == 1
    assert counters(core) == {
        "messages_received_text": 1,
        "messages_received_binary": 1,
        "bytes_received_text": 6,
        "bytes_received_binary": 7,
        "messages_sent_text": 3,
        "messages_sent_binary": 3,
        "bytes_sent_text": 3 + 2 + 5,
        "bytes_sent_binary": 5 + 8 + 2,
    }
    assert mod.sum_counters([core, core]) == (2, tuple(2 * value for value in counters(core).values()))
    assert mod.sum_counters(set()) == (0, (0,) * 8)
    core.close()
    with pytest.raises(ConnectionClosed):
        core.send("late")
    assert counters(core)["messages_sent_text"] == 3
