"""Micro-benchmarks of the whole receive path for one frame: a masked frame from a
client goes into a server ProtocolCore, which parses the header, unmasks, validates
text and hands the message out. Compiled and pure-Python cores side by side."""

from __future__ import annotations

from typing import Any

import pytest

import fastws._pure as PY
import fastws._speedups as C
from payloads import KEY, SIZES, binary, text
from test_kernels_bench import measure


def masked_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + KEY + PY.apply_mask(payload, KEY)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", ["binary", "text-mixed"])
@pytest.mark.parametrize("impl", ["fastws", "fastws-py"])
def test_receive_frame(benchmark: Any, impl: str, kind: str, size: str) -> None:
    benchmark.group = f"receive {kind} {size}"
    payload = binary(SIZES[size]) if kind == "binary" else text(SIZES[size], "mixed")
    frame = masked_frame(2 if kind == "binary" else 1, payload)
    core = (C if impl == "fastws" else PY).ProtocolCore(False, max_size=None)
    got: list[bytes] = [b""]

    def on_message(c: Any, data: bytes, is_text: bool) -> None:
        got[0] = data  # keep only the last message: the benchmark must not hoard memory

    core._on_message = on_message
    measure(benchmark, core.receive_data, frame, nbytes=len(payload))
    assert got[0] == payload and core.failure is None
