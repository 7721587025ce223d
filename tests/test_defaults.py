"""fastws.defaults is the one home of the defaults: every public entry point's defaults are its constants."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import fastws
from fastws import defaults
from fastws.cli import build_parser
from fastws.protocol import ClientOpening, ClientProtocol, ServerProtocol
from fastws.pubsub import PubSub
from fastws.server import ConnectionOptions, _build_server

# option name -> the constant every entry point that has the option must default to
EXPECTED = {
    "max_size": defaults.MAX_SIZE,
    "max_fragments": defaults.MAX_FRAGMENTS,
    "write_limit": defaults.WRITE_LIMIT,
    "open_timeout": defaults.OPEN_TIMEOUT,
    "close_timeout": defaults.CLOSE_TIMEOUT,
    "ping_interval": defaults.PING_INTERVAL,
    "ping_timeout": defaults.PING_TIMEOUT,
    "max_queue": defaults.MAX_QUEUE,
    "subscriber_buffer": defaults.SUBSCRIBER_BUFFER,
    "slow_subscriber": defaults.SLOW_SUBSCRIBER,
    "server_header": defaults.SERVER_HEADER,
    "user_agent": defaults.USER_AGENT,
    "backoff_initial": defaults.BACKOFF_INITIAL,
    "backoff_max": defaults.BACKOFF_MAX,
    "backoff_factor": defaults.BACKOFF_FACTOR,
}

ENTRY_POINTS: list[Callable[..., Any]] = [
    _build_server,  # serve's and create_server's options
    fastws.serve,
    fastws.Server,
    fastws.create_connection,
    fastws.connect,
    fastws.WebSocket,
    PubSub,
    ServerProtocol,
    ClientProtocol,
    ClientOpening,
    ConnectionOptions,
]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__qualname__)
def test_entry_point_defaults_come_from_fastws_defaults(entry: Callable[..., Any]) -> None:
    checked = 0
    for name, parameter in inspect.signature(entry).parameters.items():
        if name in EXPECTED and parameter.default is not inspect.Parameter.empty:
            assert parameter.default == EXPECTED[name], f"{entry.__qualname__}({name}=...)"
            checked += 1
    assert checked, f"{entry.__qualname__} has none of the options"


def test_connection_defaults() -> None:
    parameters = inspect.signature(fastws.Connection).parameters
    assert parameters["max_size"].default == defaults.MAX_SIZE
    assert parameters["close_timeout"].default == defaults.CLOSE_TIMEOUT


def test_cli_defaults_and_help_texts() -> None:
    parser = build_parser()
    serve = parser.parse_args(["serve"])
    connect = parser.parse_args(["connect", "ws://h/"])
    assert serve.max_size == defaults.MAX_SIZE == connect.max_size
    subparsers = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    help_text = " ".join(subparsers["serve"].format_help().split())  # argparse wraps lines
    assert "(default 1 MiB)" in help_text
    assert f"(default {defaults.PING_INTERVAL:g})" in help_text
    assert f"(default {defaults.PING_TIMEOUT:g})" in help_text
