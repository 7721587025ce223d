"""Micro-benchmarks of the hot-path kernels: unmasking and UTF-8 validation, fastws
(compiled and pure Python) next to the peers' compiled kernels and CPython's own
``bytes.decode``. Each benchmark records the payload size so that the summary
(conftest.py) can print GB/s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp._websocket.mask import _websocket_mask_cython as aiohttp_mask
from websockets.speedups import apply_mask as websockets_mask
from wsaccel.utf8validator import Utf8Validator as WsaccelValidator
from wsaccel.xormask import XorMaskerSimple

import fastws._pure as PY
import fastws._speedups as C
from payloads import KEY, SIZES, binary, text


def measure(benchmark: Any, fn: Callable[..., Any], *args: Any, nbytes: int) -> Any:
    """Run the benchmark and note bytes and GB/s (1e9 bytes per second, at the median)."""
    benchmark.extra_info["bytes"] = nbytes
    result = benchmark(fn, *args)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = nbytes / stats.stats.median / 1e9
    return result


# -- unmasking: each call returns (or fills) the unmasked payload ---------------------------
# Called without a Python wrapper where the API allows, so 125 B measures the
# kernel's own call overhead, not the benchmark's.

def _mask_call(impl: str, data: bytes) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    if impl == "fastws":
        return C.apply_mask, (data, KEY)
    if impl == "fastws-py":
        return PY.apply_mask, (data, KEY)
    if impl == "websockets":
        return websockets_mask, (data, KEY)
    if impl == "aiohttp":
        # aiohttp unmasks a bytearray in place: no allocation, a different contract.
        return aiohttp_mask, (KEY, bytearray(data))
    if impl == "aiohttp+copy":
        # What aiohttp's reader pays per frame: copy the payload out, then unmask it.
        def copy_and_mask(data: bytes) -> bytearray:
            buf = bytearray(data)
            aiohttp_mask(KEY, buf)
            return buf

        return copy_and_mask, (data,)
    assert impl == "wsaccel"
    return (lambda data: XorMaskerSimple(KEY).process(data)), (data,)  # one masker per frame


MASKERS = ["fastws", "fastws-py", "websockets", "aiohttp", "aiohttp+copy", "wsaccel"]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", MASKERS)
def test_mask(benchmark: Any, impl: str, size: str) -> None:
    benchmark.group = f"mask {size}"
    data = binary(SIZES[size])
    fn, args = _mask_call(impl, data)
    expected = C.apply_mask(data, KEY)
    if impl != "aiohttp":
        assert bytes(fn(*args)) == expected
    measure(benchmark, fn, *args, nbytes=len(data))


# -- UTF-8 validation: "is this complete, valid UTF-8?" -------------------------------------

def _utf8_call(impl: str, data: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], bool]]:
    """(function, arguments, how to read its answer as a bool)."""
    if impl in ("fastws", "fastws-py"):
        v = (C if impl == "fastws" else PY).Utf8Validator()  # reused, as a connection does
        return v.validate, (data, True), lambda r: r is True
    if impl == "wsaccel":
        w = WsaccelValidator()  # valid complete text leaves it ready for the next call
        return w.validate, (data,), lambda r: r[0] and r[1]
    assert impl == "bytes.decode"
    return bytes.decode, (data,), lambda r: isinstance(r, str)  # builds the str: that is its cost


VALIDATORS = ["fastws", "fastws-py", "wsaccel", "bytes.decode"]


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("mix", ["ascii", "mixed"])
@pytest.mark.parametrize("impl", VALIDATORS)
def test_utf8(benchmark: Any, impl: str, mix: str, size: str) -> None:
    benchmark.group = f"utf8 {mix} {size}"
    data = text(SIZES[size], mix)
    fn, args, ok = _utf8_call(impl, data)
    assert ok(fn(*args)) and ok(fn(*args))
    assert ok(measure(benchmark, fn, *args, nbytes=len(data)))
