"""Shared start-up of the atheris harnesses: instrument fastws, then fuzz one check."""

from __future__ import annotations

import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))


def main(harness: str) -> None:
    sys.path.insert(0, HERE)
    # Only fastws is instrumented (the pure-Python cores, handshake, deflate); the compiled
    # twin is not (that needs a -fsanitize=fuzzer build) but runs on every input all the same.
    with atheris.instrument_imports(include=["fastws"]):
        import checks

    check = checks.CHECKS[harness]

    def test_one_input(data: bytes) -> None:
        check(data)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
