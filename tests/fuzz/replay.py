"""Replays files through the fuzz checks, without atheris: reproduces a crash, or feeds coverage.

Run: python tests/fuzz/replay.py HARNESS PATH...   (PATH: a file or a directory of files)
Exit status 1 if any input fails its check; each failure is printed with its path.
"""

from __future__ import annotations

import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks  # noqa: E402


def inputs(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, n) for n in os.listdir(path) if not n.startswith("."))
        elif os.path.exists(path):
            found.append(path)
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in checks.CHECKS:
        print(f"usage: replay.py {{{','.join(checks.CHECKS)}}} PATH...", file=sys.stderr)
        return 2
    check = checks.CHECKS[argv[0]]
    files = inputs(argv[1:])
    failed = 0
    for path in files:
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            check(data)
        except Exception:  # noqa: BLE001 - every failure is reported, then the next input
            failed += 1
            print(f"FAILED {path}", file=sys.stderr)
            traceback.print_exc()
    print(f"{argv[0]}: {len(files)} inputs replayed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
