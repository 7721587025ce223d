"""Event loop choice: uvloop when it is installed, plain asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop as uvloop  # re-exported: fastws.cli tells whether it is installed
except ImportError:  # plain asyncio works too, only slower
    uvloop = None  # type: ignore[assignment]  # the module's name, None when it is missing


def new_event_loop(use_uvloop: bool | None = None) -> asyncio.AbstractEventLoop:
    """A new loop: uvloop unless ``use_uvloop`` is False or uvloop is missing."""
    if use_uvloop is None:
        use_uvloop = uvloop is not None
    if use_uvloop:
        if uvloop is None:
            raise RuntimeError("uvloop is not installed")
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """Like ``asyncio.run``, on uvloop by default."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(use_uvloop)) as runner:
        return runner.run(main)


def event_loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """'uvloop' or 'asyncio', for the running loop (or the default choice when none runs)."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return "uvloop" if uvloop is not None else "asyncio"
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
