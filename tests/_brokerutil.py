"""What the broker tests share: broker servers as child processes on free ports, and
``fastws serve chat`` processes to talk through them."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import fastws
import fastws.apps
from _serveproc import NEUTRAL_CWD, child_env
from _wsutil import IO_TIMEOUT

T = IO_TIMEOUT


async def wait(aw: Any) -> Any:
    return await asyncio.wait_for(aw, T)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A throwaway server process (redis-server, nats-server): started until it logs ``ready``,
    stopped (``kill=True``: SIGKILL, as a crash) and started again with the same arguments."""

    def __init__(self, argv: Sequence[str], ready: str, name: str) -> None:
        self.argv = list(argv)
        self.ready = ready
        self.name = name
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + T
        lines = []
        for line in self.proc.stdout:  # blocks until the next log line: no sleeping
            lines.append(line)
            if self.ready in line:
                # Keep draining its log so that a chatty server never blocks on a full pipe.
                drain_in_thread(self.proc.stdout)
                return
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n" + "".join(lines[-10:]))

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(T)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def drain_in_thread(stream: Any) -> None:
    """Read ``stream`` to its end in a daemon thread (a server's log after it is ready)."""

    def drain() -> None:
        with contextlib.suppress(ValueError, OSError):
            for _ in stream:
                pass

    threading.Thread(target=drain, daemon=True).start()


def temp_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix)


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def chat_server(broker: Any) -> AsyncIterator[fastws.Server]:
    server = await fastws.create_server(fastws.apps.ChatListener, "127.0.0.1", 0, broker=broker)
    async with server:
        yield server


def start_cli(*args: str) -> tuple[subprocess.Popen[str], int]:
    """``fastws serve ...`` in its own process; returns it and the port it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastws", "serve", *args, "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=NEUTRAL_CWD,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ws://" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=T)
        raise AssertionError(f"fastws serve did not start: {line!r} {err[-2000:]!r}")
    port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    return proc, port


def stop_cli(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(T)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(T)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


async def exchange(a: Any, b: Any, count: int = 50, tag: tuple[str, str] = ("a", "b")) -> None:
    """Both clients speak in turn; each must see everything, in order per speaker."""
    x, y = tag
    for i in range(count):
        await a.send(f"{x}{i}")
        await b.send(f"{y}{i}")
    for ws in (a, b):
        got = [await wait(ws.recv()) for _ in range(2 * count)]
        assert [m for m in got if m.startswith(x)] == [f"{x}{i}" for i in range(count)]
        assert [m for m in got if m.startswith(y)] == [f"{y}{i}" for i in range(count)]
