"""Payloads for the micro-benchmarks: random bytes, ASCII text, and valid UTF-8
mixing 1-, 2-, 3- and 4-byte characters, each exactly the stated size."""

from __future__ import annotations

import functools
import random

SIZES = {"125B": 125, "4KiB": 4096, "64KiB": 65536, "1MiB": 2**20}
KEY = b"\x9d\x3a\xe1\x57"

# Code point ranges per UTF-8 length; the 3-byte one skips the surrogates.
_RANGES = {1: [(0x20, 0x7E)], 2: [(0x80, 0x7FF)], 3: [(0x800, 0xD7FF), (0xE000, 0xFFFF)], 4: [(0x10000, 0x10FFFF)]}


@functools.cache
def binary(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@functools.cache
def text(size: int, mix: str) -> bytes:
    """``mix`` "ascii" or "mixed" (each character 1 to 4 bytes long, equally likely)."""
    rng = random.Random(size * 7 + len(mix))
    out = bytearray()
    while len(out) < size:
        room = size - len(out)
        width = 1 if mix == "ascii" else rng.choice([w for w in (1, 2, 3, 4) if w <= room])
        lo, hi = rng.choice(_RANGES[width])
        out += chr(rng.randint(lo, hi)).encode()
    data = bytes(out)
    data.decode("utf-8")  # valid, or the benchmark would measure an early exit
    assert len(data) == size
    return data
