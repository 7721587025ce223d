"""A quick before/after check of the compiled core's hot path (no pytest-benchmark).

Times, with ``time.perf_counter`` over many iterations:

* ``receive_data`` of one chunk holding 64 masked 256 B binary frames (server side);
* ``receive_data`` of one masked 4 KiB text frame (mixed UTF-8);
* ``send()`` of 256 B bytes and of a 256 B ASCII str (server side, ``_write`` a no-op);
* ``receive_data`` of 64 masked 16 B pings (each answered with a pong): the control
  path, which is not per data frame but is what a ping flood costs.

Each case reports the median of ``--repeat`` rounds, in ns per call. ``--json``
writes the medians, so that two builds can be compared (``--compare a.json b.json``).
Run it pinned on a quiet machine: ``taskset -c 1 python bench/micro/core_baseline.py``.

On a shared machine, compare two builds in one process instead: ``--so A.so B.so``
loads each compiled module file as ``fastws._speedups`` (they are separate shared
objects, so both can live side by side) and alternates them round by round, so
that a burst of load hits both alike; it prints each build's median and fastest\nround, and their ratios to the first build.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def _mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i & 3] for i, b in enumerate(data))


def _frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + key + _mask(payload, key)


def _text(size: int) -> bytes:
    unit = "aé€😀 plain ascii words ".encode()
    out = (unit * (size // len(unit) + 1))[:size]
    while True:  # do not end inside a character
        try:
            out.decode()
            return out
        except UnicodeDecodeError:
            out = out[:-1] + b"x"


def cases(mod: Any) -> dict[str, tuple[Callable[[], None], int]]:
    key = b"\x11\x22\x33\x44"
    count = [0]

    def on_message(core: Any, data: bytes, is_text: bool) -> None:
        count[0] += 1

    def core() -> Any:
        c = mod.ProtocolCore(False, max_size=None)
        c._write = _noop
        c._on_message = on_message
        return c

    binary = core()
    chunk64 = b"".join(_frame(2, bytes(range(256)), key) for _ in range(64))
    text = core()
    text4k = _frame(1, _text(4096), key)
    sender = core()
    pinged = core()
    pings = b"".join(_frame(9, bytes(range(16)), key) for _ in range(64))
    payload = bytes(range(256))
    spayload = ("abcdefgh" * 32)[:256]

    return {
        "receive 64 x 256 B binary": (lambda: binary.receive_data(chunk64), 2000),
        "receive 4 KiB text": (lambda: text.receive_data(text4k), 20000),
        "send 256 B bytes": (lambda: sender.send(payload), 200000),
        "send 256 B str": (lambda: sender.send(spayload), 200000),
        "receive 64 x 16 B pings": (lambda: pinged.receive_data(pings), 2000),
    }


def _noop(data: Any) -> None:
    pass


def measure(fn: Callable[[], None], n: int, repeat: int) -> float:
    for _ in range(n // 10):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e9)
    return statistics.median(times)


def load_so(path: str) -> Any:
    """A compiled fastws._speedups from ``path``, whichever one is installed."""
    import importlib.util

    import fastws  # noqa: F401 - the package first: the module imports from it

    spec = importlib.util.spec_from_file_location("fastws._speedups", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def alternate(paths: list[str], repeat: int) -> None:
    runs = [cases(load_so(p)) for p in paths]
    times: list[dict[str, list[float]]] = [{name: [] for name in runs[0]} for _ in paths]
    for _ in range(repeat):
        for name in runs[0]:
            for i, run in enumerate(runs):
                fn, n = run[name]
                times[i][name].append(measure(fn, n, 1))
    builds = "".join(f"{'build ' + chr(65 + i):>12}" for i in range(len(paths)))
    print(f"{'median ns/call':28}{builds}" + "".join(f"{chr(65 + i) + '/A':>8}" for i in range(1, len(paths))))
    for name in runs[0]:
        medians = [statistics.median(t[name]) for t in times]
        print(f"{name:28}" + "".join(f"{m:12.1f}" for m in medians) + "".join(f"{m / medians[0]:8.3f}" for m in medians[1:]))
    # The fastest round of each: what a build costs when the machine lets it run.
    print(f"{'min ns/call':28}{builds}")
    for name in runs[0]:
        mins = [min(t[name]) for t in times]
        print(f"{name:28}" + "".join(f"{m:12.1f}" for m in mins) + "".join(f"{m / mins[0]:8.3f}" for m in mins[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", default="fastws._speedups", help="the module with ProtocolCore")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", help="write the medians here")
    ap.add_argument("--compare", nargs="+", metavar="JSON", help="print a table of saved runs instead")
    ap.add_argument("--so", nargs="+", metavar="SO", help="alternate these compiled module files in one process")
    args = ap.parse_args()
    if args.so:
        alternate(args.so, args.repeat)
        return
    if args.compare:
        runs = [json.load(open(p)) for p in args.compare]
        names = list(runs[0]["results"])
        print(f"{'case':28}" + "".join(f"{os.path.basename(p):>16}" for p in args.compare))
        for name in names:
            print(f"{name:28}" + "".join(f"{r['results'][name]:16.1f}" for r in runs))
        return
    mod = importlib.import_module(args.module)
    results = {}
    for name, (fn, n) in cases(mod).items():
        results[name] = measure(fn, n, args.repeat)
        print(f"{name:28} {results[name]:10.1f} ns/call", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"module": mod.__file__, "python": sys.version, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
