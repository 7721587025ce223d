"""Shared fixtures: each async test runs on a fresh event loop, plain asyncio or uvloop."""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import os
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import trustme

# The helpers module sits next to this file; make it importable whatever the rootdir.
sys.path.insert(0, os.path.dirname(__file__))

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_HINT = "run `pip install '.[test]'` in the checkout (it builds the compiled extension), then `pytest`"


def _uncompiled_checkout(package_dir: str | None) -> bool:
    """Is ``package_dir`` this checkout's fastws/, holding sources but no compiled extension?"""
    if package_dir is None or os.path.realpath(package_dir) != os.path.join(os.path.realpath(CHECKOUT), "fastws"):
        return False
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return not any(name.startswith("_speedups.") and name.endswith(suffixes) for name in os.listdir(package_dir))


def _package_dir() -> str | None:
    module = sys.modules.get("fastws")
    if module is not None:
        return os.path.dirname(module.__file__ or "")
    spec = importlib.util.find_spec("fastws")
    return None if spec is None else (spec.submodule_search_locations or [None])[0]


def _prefer_installed_fastws() -> str | None:
    """Make ``import fastws`` find the installed fastws, never the checkout's uncompiled sources.

    ``python -m pytest`` (or ``PYTHONPATH=.``) puts the checkout first on
    sys.path, where ``fastws/`` has no compiled extension: that copy would
    silently test pure Python twice, and the tests that need the extension
    would not even be collected. Those entries are dropped, so the installed
    fastws (the one plain ``pytest`` imports) is tested; an editable install,
    whose extension is built into the checkout, is used as it is.
    Returns why the tests cannot run, or None.
    """
    if _uncompiled_checkout(_package_dir()):
        if "fastws" in sys.modules:
            return f"fastws was imported from the checkout's uncompiled sources before the tests: {INSTALL_HINT}"
        checkout = os.path.realpath(CHECKOUT)
        sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or os.getcwd()) != checkout]
        importlib.invalidate_caches()
        if _uncompiled_checkout(_package_dir()):  # on sys.path some other way (a .pth file)
            return f"fastws resolves to the checkout's uncompiled sources: {INSTALL_HINT}"
    if _package_dir() is None:
        return f"fastws is not installed for {sys.executable}: {INSTALL_HINT}"
    return None


# Before anything imports fastws; pytest_configure reports a problem in one line.
SETUP_PROBLEM = _prefer_installed_fastws()

T = TypeVar("T")

# Upper bound for one async test body, in seconds before scaling; pytest-timeout
# (pyproject.toml, also scaled) is the last resort.
TEST_TIMEOUT = 30.0

LOOP_KINDS = ["asyncio", "uvloop"]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Say in one line when the tests cannot run; scale pytest-timeout's configured
    timeout too, unless the command line or PYTEST_TIMEOUT set one."""
    if SETUP_PROBLEM is not None:
        raise pytest.UsageError(SETUP_PROBLEM)
    # Hypothesis: no per-example deadline and no "data generation too slow" health
    # check anywhere, since a busy machine trips both (a test's own settings still apply).
    from hypothesis import HealthCheck, settings

    from _wsutil import TIMEOUT_FACTOR, scaled

    settings.register_profile("fastws", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("fastws")

    if TIMEOUT_FACTOR == 1 or "PYTEST_TIMEOUT" in os.environ:
        return
    if getattr(config.option, "timeout", "no plugin") is None and config.getini("timeout"):
        config.option.timeout = scaled(float(config.getini("timeout")))


def pytest_report_header(config: pytest.Config) -> list[str]:
    import fastws
    from _wsutil import TIMEOUT_FACTOR
    from fastws import _accel

    path = "compiled extension, kernels " + _accel.KERNEL_ISA if _accel.USING_EXTENSION else "pure Python"
    return [
        f"fastws {fastws.__version__} from {os.path.dirname(fastws.__file__ or '')} ({path})",
        f"time bounds scaled by {TIMEOUT_FACTOR:g} (FASTWS_TEST_TIMEOUT_FACTOR)",
    ]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def run(loop_kind: str) -> Callable[..., Any]:
    """``run(coro, timeout=...)``: run ``coro`` to completion on a new loop of ``loop_kind``.

    ``timeout`` (seconds) is scaled by FASTWS_TEST_TIMEOUT_FACTOR here.
    """

    import fastws
    from _wsutil import scaled

    def runner(coro: Awaitable[T], timeout: float = TEST_TIMEOUT) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, scaled(timeout))

        with asyncio.Runner(loop_factory=lambda: fastws.new_event_loop(use_uvloop=loop_kind == "uvloop")) as r:
            result = r.run(bounded())
        return result

    return runner


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority for one test module: its servers' certificates, its clients' trust."""
    return trustme.CA()


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca`` and nothing else."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context
