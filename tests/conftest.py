"""Shared fixtures: each async test runs on a fresh event loop, plain asyncio or uvloop."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import fastws

# The helpers module sits next to this file; make it importable whatever the rootdir.
sys.path.insert(0, os.path.dirname(__file__))

T = TypeVar("T")

# Upper bound for one async test body; pytest-timeout (120 s) is the last resort.
TEST_TIMEOUT = 30.0

LOOP_KINDS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """``run(coro, timeout=...)``: run ``coro`` to completion on a new loop of ``loop_kind``."""

    def runner(coro: Awaitable[T], timeout: float = TEST_TIMEOUT) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, timeout)

        with asyncio.Runner(loop_factory=lambda: fastws.new_event_loop(use_uvloop=loop_kind == "uvloop")) as r:
            result = r.run(bounded())
        return result

    return runner
