"""Run the micro-benchmarks and print GB/s as a markdown table.

    python bench/micro/report.py                  # run everything (~3 minutes), print the table
    python bench/micro/report.py -k "mask"        # extra arguments go to pytest
    python bench/micro/report.py --json run.json  # only render a saved --benchmark-json file

GB/s is payload bytes per second / 1e9 at the median time of a call. The same
table is printed at the end of a plain ``pytest bench/micro --benchmark-only`` run
(see conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# (group, implementation, payload bytes, median seconds)
Row = tuple[str, str, int, float]


def _group_key(group: str) -> tuple[int, str, int]:
    """Order groups by kind (mask, utf8, receive), then by variant, then by size."""
    kinds = ["mask", "utf8", "receive"]
    words = group.split()
    units = {"B": 1, "KiB": 1024, "MiB": 2**20}
    size = words[-1]
    number = int("".join(ch for ch in size if ch.isdigit()) or 0)
    unit = size.lstrip("0123456789")
    kind = kinds.index(words[0]) if words[0] in kinds else len(kinds)
    return kind, " ".join(words[1:-1]), number * units.get(unit, 1)


def markdown(rows: Iterable[Row]) -> str:
    """One line per benchmark group, one column per implementation, GB/s in the cells."""
    cells: dict[str, dict[str, float]] = {}
    impls: list[str] = []
    for group, impl, nbytes, median in rows:
        cells.setdefault(group, {})[impl] = nbytes / median / 1e9
        if impl not in impls:
            impls.append(impl)
    lines = ["| GB/s | " + " | ".join(impls) + " |", "|---|" + "---:|" * len(impls)]
    for group in sorted(cells, key=_group_key):
        row = cells[group]
        best = max(row.values())
        shown = []
        for impl in impls:
            if impl not in row:
                shown.append("")
                continue
            value = row[impl]
            text = f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"
            shown.append(f"**{text}**" if value == best else text)
        lines.append(f"| {group} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def rows_from_json(doc: dict) -> list[Row]:
    return [
        (b["group"], b["params"]["impl"], b["extra_info"]["bytes"], b["stats"]["median"])
        for b in doc["benchmarks"]
        if "bytes" in b.get("extra_info", {})
    ]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--json"]:
        with open(argv[1]) as f:
            print(markdown(rows_from_json(json.load(f))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        cmd = [sys.executable, "-m", "pytest", HERE, "--benchmark-only", "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={out}", "--benchmark-columns=median,rounds", *argv]
        env = dict(os.environ, FASTWS_MICRO_NO_SUMMARY="1")
        status = subprocess.call(cmd, cwd=ROOT, env=env)
        if not os.path.exists(out):
            return status or 1
        with open(out) as f:
            doc = json.load(f)
    info = doc.get("machine_info", {})
    print(f"\n{info.get('cpu', {}).get('brand_raw', '?')}, Python {info.get('python_version', '?')}, "
          f"fastws kernels: {doc['benchmarks'][0]['extra_info'].get('isa', '?') if doc['benchmarks'] else '?'}\n")
    print(markdown(rows_from_json(doc)))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
