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
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import fastws
import fastws.apps
from _serveproc import NEUTRAL_CWD, child_env, serving
from _wsutil import IO_TIMEOUT, until, uri_of
from fastws.brokers import QueuedBroker

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

    def cleanup(self) -> None:
        self.stop()


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


B = TypeVar("B", bound=QueuedBroker)
S = TypeVar("S")


def broker_of(server: fastws.Server, kind: type[B] = QueuedBroker) -> B:  # type: ignore[assignment]
    """The server's broker, checked to be a ``kind`` (``wait_synced``, ``wait_disconnected``...)."""
    broker = server.pubsub.broker
    assert isinstance(broker, kind), broker
    return broker


@contextlib.contextmanager
def running(server: S) -> Iterator[S]:
    """A test's broker server (``start()``, ``cleanup()``), cleaned up whatever happens."""
    try:
        server.start()  # type: ignore[attr-defined]
        yield server
    finally:
        server.cleanup()  # type: ignore[attr-defined]


async def wait_all_sent_or_lost(server: fastws.Server) -> dict[str, int]:
    """Until the broker has accounted for every publish (acknowledgements come after delivery)."""
    stats = server.pubsub.stats
    await until(lambda: stats["sent"] + stats["lost"] == stats["published"], what="every publish sent or lost")
    return stats


async def one_topic_exactly_once(one: fastws.Server, two: fastws.Server, room: str, count: int = 200) -> None:
    """Clients of two servers on one broker talk in ``room``: each sees every message once,
    with its type, in order per publisher, and nothing after the last (a marker is next)."""
    a = await fastws.connect(uri_of(one, f"/{room}"))
    b = await fastws.connect(uri_of(two, f"/{room}"))
    for server in (one, two):
        await wait(broker_of(server).wait_synced())
    sent_a = [f"{room}:a{i}" for i in range(count)]
    sent_b = [f"{room}:b{i}".encode() for i in range(count)]
    for x, y in zip(sent_a, sent_b, strict=True):
        await a.send(x)
        await b.send(y)
    for ws in (a, b):
        got = [await wait(ws.recv()) for _ in range(2 * count)]
        assert [m for m in got if isinstance(m, str)] == sent_a
        assert [m for m in got if isinstance(m, bytes)] == sent_b
    await a.send(f"{room}:marker")
    assert await wait(b.recv()) == await wait(a.recv()) == f"{room}:marker"
    await a.close()
    await b.close()


async def starts_while_down(server: fastws.Server, start_broker: Callable[[], None]) -> fastws.WebSocket:
    """``server`` started while its broker was down: one outage counted, a client of room
    ``solo`` still hears itself, that publish is counted lost; then ``start_broker()`` (in a
    thread: it waits for the broker's processes) and the broker syncs. Returns the client."""
    broker = broker_of(server)
    assert broker.connected is False and server.pubsub.stats["outages"] == 1
    ws = await fastws.connect(uri_of(server, "/solo"))
    await ws.send("local only")
    assert await wait(ws.recv()) == "local only"
    assert server.pubsub.stats["lost"] == 1
    await asyncio.to_thread(start_broker)
    await wait(broker.wait_synced())
    return ws


async def survives_an_outage(
    one: fastws.Server,
    two: fastws.Server,
    room: str,
    down: Callable[[], None],
    up: Callable[[], None],
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Clients of two servers talk in ``room`` while ``down()`` takes the broker (or the
    shard of ``room``) away and ``up()`` brings it back: local delivery goes on, the 5
    messages published meanwhile are lost and counted, each server counts one outage,
    delivery resumes, and nothing arrives twice or late. ``meanwhile`` runs during the outage."""
    a = await fastws.connect(uri_of(one, f"/{room}"))
    b = await fastws.connect(uri_of(two, f"/{room}"))
    for server in (one, two):
        await wait(broker_of(server).wait_synced())
    await a.send("before")
    assert await wait(b.recv()) == "before" and await wait(a.recv()) == "before"

    down()
    for server in (one, two):
        await wait(broker_of(server).wait_disconnected())
    for i in range(5):
        await a.send(f"during {i}")
    # Local delivery goes on; the other server cannot get these, and they are counted.
    assert [await wait(a.recv()) for _ in range(5)] == [f"during {i}" for i in range(5)]
    stats = await wait_all_sent_or_lost(one)
    assert stats["lost"] == 5 and stats["outages"] == 1, stats
    assert two.pubsub.stats["outages"] == 1
    if meanwhile is not None:
        await meanwhile()

    up()
    for server in (one, two):
        await wait(broker_of(server).wait_synced())
    await a.send("after")
    assert await wait(b.recv()) == "after"  # "during" never reached b, nor arrives late: "after" is next
    assert await wait(a.recv()) == "after"
    await b.send("back")
    assert await wait(a.recv()) == "back" and await wait(b.recv()) == "back"
    assert one.pubsub.stats["lost"] == 5 and two.pubsub.stats["lost"] == 0
    await a.close()
    await b.close()


async def other_publishers_reach(server: fastws.Server, room: str, publish: Callable[[list[bytes]], Awaitable[None]]) -> None:
    """Messages another tool publishes (``publish``, without fastws's envelope) reach a
    subscriber of ``room``: text when they are UTF-8, binary otherwise."""
    ws = await fastws.connect(uri_of(server, f"/{room}"))
    await wait(broker_of(server).wait_synced())
    await publish(["plain text é".encode(), b"\xff\x00 binary"])
    assert await wait(ws.recv()) == "plain text é"
    assert await wait(ws.recv()) == b"\xff\x00 binary"
    await ws.close()


# -- the command line: `fastws serve chat --broker URL --metrics` across an outage --------------


def scrape(url: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=T) as response:
        return response.read().decode().splitlines()


async def scraped(url: str, *samples: str) -> None:
    """Until ``url`` (a process's --metrics) serves every line of ``samples``: counters have no event to wait on."""
    lines: list[str] = []

    def ready() -> bool:
        nonlocal lines
        lines = scrape(url)
        return all(sample in lines for sample in samples)

    deadline = asyncio.get_running_loop().time() + T
    while not await asyncio.to_thread(ready):
        assert asyncio.get_running_loop().time() < deadline, f"{samples} not served within {T} s: {lines}"
        await asyncio.sleep(0.02)


async def chat_processes_survive_an_outage(
    broker_url: str, room: str, down: Callable[[], None], up: Callable[[], None], subscribed: Callable[[int], Awaitable[None]]
) -> None:
    """Two ``fastws serve chat --broker`` processes form one chat in ``room`` while ``down()``
    takes the broker (or the room's shard) away and ``up()`` brings it back: their --metrics say
    when each is disconnected and connected again, the publishes in between are counted lost,
    and delivery resumes with nothing twice. ``subscribed(n)`` waits for n subscriptions at the broker."""
    args = ("chat", "--broker", broker_url, "--port", "0", "--metrics", "127.0.0.1:0", "--log-level", "warning")
    async with serving(*args) as one, serving(*args) as two:
        urls = []
        for process in (one, two):
            line = await asyncio.to_thread(process.next_line)
            assert line is not None and line.startswith("metrics at "), line
            urls.append(line.removeprefix("metrics at "))
        a = await fastws.connect(f"ws://127.0.0.1:{one.port}/{room}")
        b = await fastws.connect(f"ws://127.0.0.1:{two.port}/{room}")
        await wait(subscribed(2))
        await exchange(a, b, count=20)

        down()
        for url in urls:
            await scraped(url, "fastws_pubsub_broker_connected 0")
        for i in range(5):
            await a.send(f"a-during{i}")
        assert [await wait(a.recv()) for _ in range(5)] == [f"a-during{i}" for i in range(5)]  # local delivery goes on
        await scraped(urls[0], "fastws_pubsub_lost_total 5")

        up()
        for url in urls:
            await scraped(url, "fastws_pubsub_broker_connected 1")
        await wait(subscribed(2))
        await exchange(a, b, count=20, tag=("a-after", "b-after"))  # only these: nothing late, nothing twice
        await a.send("a-end")
        assert await wait(b.recv()) == "a-end" and await wait(a.recv()) == "a-end"
        await scraped(urls[0], "fastws_pubsub_lost_total 5")
        await scraped(urls[1], "fastws_pubsub_lost_total 0")
        await a.close()
        await b.close()
