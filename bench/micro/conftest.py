"""Micro-benchmark plumbing: the compiled module is required (a benchmark of the
fallback would be silently meaningless), and a GB/s table ends every run."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402

try:
    import fastws._speedups as _speedups
except ImportError as exc:  # pragma: no cover
    raise ImportError("bench/micro needs the compiled fastws._speedups: python setup.py build_ext --inplace") from exc


@pytest.fixture(autouse=True)
def _note_isa(request: pytest.FixtureRequest) -> None:
    """Record which kernel the dispatcher picked (avx2, ssse3, sse2, scalar) with each result."""
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info["isa"] = _speedups.KERNEL_ISA


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or os.environ.get("FASTWS_MICRO_NO_SUMMARY"):
        return
    rows = [
        (b.group, b.params["impl"], b.extra_info["bytes"], b.stats.median)
        for b in session.benchmarks
        if b and "bytes" in b.extra_info
    ]
    if rows:
        terminalreporter.write_sep("-", f"GB/s (payload bytes / median time / 1e9), kernels: {_speedups.KERNEL_ISA}")
        terminalreporter.write_line(report.markdown(rows))
