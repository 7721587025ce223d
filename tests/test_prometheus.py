"""``fastws serve --workers 2 --metrics``, scraped by a real Prometheus server.

The test starts Debian's ``prometheus`` on a free loopback port (its own config
and storage in a temporary directory, never the system service), drives a
scripted load at the workers, and reads the sums back through Prometheus's HTTP
query API: they must be exact, whichever worker served which connection, and
stay so when a worker is replaced. CI installs prometheus (.ci/run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from _serveproc import serving
from _wsutil import RawClient, build_frame, close_payload, scaled, upgrade_request

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus (apt-get install prometheus; .ci/run installs it)"),
    pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT"),
]

DEADLINE = scaled(60.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=scaled(10.0)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@contextlib.contextmanager
def prometheus(target: str) -> Iterator[str]:
    """A Prometheus server scraping ``target`` (host:port) twice a second; yields its base URL."""
    assert PROMETHEUS is not None
    with tempfile.TemporaryDirectory(prefix="fastws-prometheus-") as tmp:
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n"
                f"scrape_configs:\n  - job_name: fastws\n    static_configs:\n      - targets: ['{target}']\n"
            )
        port = free_port()
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(tmp, 'data')}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_get(f"{base}/-/ready")[0] == 200 or proc.poll() is not None, "prometheus ready")
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise AssertionError(f"prometheus exited: {proc.stderr.read().decode()[-2000:]}")
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(scaled(20.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(predicate: Any, what: str) -> None:
    """Poll ``predicate`` (blocking) until true; AssertionError after DEADLINE."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {DEADLINE} s")
        time.sleep(0.1)


def query(base: str) -> dict[str, float]:
    """Every fastws sample Prometheus holds now, keyed 'name{label="v"}' (instance and job left out)."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": '{__name__=~"fastws_.+"}'})
    status, body = http_get(url)
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for item in json.loads(body)["data"]["result"]:
        metric = dict(item["metric"])
        name = metric.pop("__name__")
        metric.pop("instance", None)
        metric.pop("job", None)
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()))
        out[f"{name}{{{labels}}}" if labels else name] = float(item["value"][1])
    return out


async def await_values(base: str, expected: dict[str, float]) -> dict[str, float]:
    """Wait until Prometheus's latest samples include ``expected`` exactly; return them all."""
    seen: dict[str, float] = {}

    def matches() -> bool:
        nonlocal seen
        seen = query(base)
        return all(seen.get(k) == v for k, v in expected.items())

    try:
        await asyncio.to_thread(wait_until, matches, "the expected values in prometheus")
    except AssertionError:
        wrong = {k: (v, seen.get(k)) for k, v in expected.items() if seen.get(k) != v}
        raise AssertionError(f"expected vs prometheus: {wrong}") from None
    return seen


async def connect(port: int) -> tuple[RawClient, int]:
    """A raw client after the handshake, and the pid of the worker that accepted it."""
    client = await RawClient.open(port)
    client.send(upgrade_request("/load"))
    head = await client.read_http_head()
    assert head.status == 101, head
    return client, int(head.headers["fastws-worker"])


async def echo(client: RawClient, opcode: int, payload: bytes) -> None:
    client.send(build_frame(opcode, payload))
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (opcode, payload)


async def refused(port: int, request: bytes, status: int) -> None:
    client = await RawClient.open(port)
    client.send(request)
    assert (await client.read_http_head()).status == status
    await client.read_all_until_eof()
    client.close()


@contextlib.asynccontextmanager
async def scraped_workers(loop_kind: str) -> AsyncIterator[tuple[Any, str]]:
    args = ("--port", "0", "--workers", "2", "--metrics", "127.0.0.1:0", "--no-access-log", "--loop", loop_kind)
    async with serving(*args) as server:
        line = await asyncio.to_thread(server.next_line)
        assert line is not None and line.startswith("metrics at http://127.0.0.1:"), line
        target = line.removeprefix("metrics at http://").removesuffix("/metrics")
        with prometheus(target) as base:
            yield server, base


def worker_pids(supervisor: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == supervisor:
                pids.add(int(entry))
    return pids


def test_prometheus_sees_the_exact_sums_over_two_workers_and_across_a_restart(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with scraped_workers(loop_kind) as (server, base):
            port = server.port
            text = {"messages": 0, "bytes": 0}
            binary = {"messages": 0, "bytes": 0}
            closes: dict[int, int] = {}
            served: set[int] = set()
            for i in range(12):
                client, pid = await connect(port)
                served.add(pid)
                for _ in range(i % 3 + 1):
                    await echo(client, 1, b"t" * (i + 1))
                    text["messages"] += 1
                    text["bytes"] += i + 1
                for _ in range(i % 2 + 1):
                    await echo(client, 2, bytes(i + 2))
                    binary["messages"] += 1
                    binary["bytes"] += i + 2
                if i < 10:
                    code = 4000 + i % 3
                    client.send(build_frame(8, close_payload(code)))
                    assert (await client.expect_close()).payload == close_payload(code)
                elif i == 10:
                    client.send(build_frame(3, b"reserved opcode"))  # a protocol error: 1002
                    code = 1002
                    await client.expect_close()
                else:
                    client.writer.transport.abort()  # no close frame: 1006
                    code = 1006
                closes[code] = closes.get(code, 0) + 1
                client.close()
            still_open = [await connect(port) for _ in range(2)]
            for client, _ in still_open:
                await echo(client, 1, b"open")
                text["messages"] += 1
                text["bytes"] += 4
            await refused(port, upgrade_request(key=None), 400)
            await refused(port, upgrade_request(key=None), 400)
            await refused(port, upgrade_request(ws_version="8"), 426)

            counters = {
                'fastws_messages_received_total{type="text"}': text["messages"],
                'fastws_messages_received_total{type="binary"}': binary["messages"],
                'fastws_messages_sent_total{type="text"}': text["messages"],
                'fastws_messages_sent_total{type="binary"}': binary["messages"],
                'fastws_received_bytes_total{type="text"}': text["bytes"],
                'fastws_received_bytes_total{type="binary"}': binary["bytes"],
                'fastws_sent_bytes_total{type="text"}': text["bytes"],
                'fastws_sent_bytes_total{type="binary"}': binary["bytes"],
                'fastws_handshake_failures_total{status="400"}': 2,
                'fastws_handshake_failures_total{status="426"}': 1,
                'fastws_protocol_errors_total{code="1002"}': 1,
                "fastws_connections_total": 14,
            }
            expected = {
                **counters,
                **{f'fastws_connections_closed_total{{code="{code}"}}': n for code, n in closes.items()},
                "fastws_connections_open": 2,
                "fastws_workers": 2,
                "fastws_worker_restarts_total": 0,
            }
            seen = await await_values(base, expected)
            assert not any(k.startswith("fastws_connections_closed_total") and k not in expected for k in seen), seen

            # The open connections end with 1000; a worker stops and is replaced: nothing goes backwards.
            for client, _ in still_open:
                client.send(build_frame(8, close_payload(1000)))
                await client.expect_close()
                client.close()
            victims = worker_pids(server.proc.pid)
            assert len(victims) == 2, victims
            os.kill(min(victims), signal.SIGTERM)
            await asyncio.to_thread(server.wait_for_error_output, f"worker {min(victims)} exited with status 0; replacing it")
            expected.update(
                {
                    'fastws_connections_closed_total{code="1000"}': 2,
                    "fastws_connections_open": 0,
                    "fastws_worker_restarts_total": 1,
                }
            )
            await await_values(base, expected)
            wait_replaced = lambda: len(worker_pids(server.proc.pid) - {min(victims)}) == 2  # noqa: E731
            await asyncio.to_thread(wait_until, wait_replaced, "a replacement worker")
            await await_values(base, {**expected, "fastws_workers": 2})
            # A new connection on whichever worker: the sums move on from there.
            client, _ = await connect(port)
            await echo(client, 2, b"after")
            client.send(build_frame(8, close_payload(1000)))
            await client.expect_close()
            client.close()
            counters_after = {
                'fastws_messages_received_total{type="binary"}': binary["messages"] + 1,
                'fastws_received_bytes_total{type="binary"}': binary["bytes"] + 5,
                'fastws_messages_sent_total{type="binary"}': binary["messages"] + 1,
                'fastws_sent_bytes_total{type="binary"}': binary["bytes"] + 5,
                "fastws_connections_total": 15,
                'fastws_connections_closed_total{code="1000"}': 3,
            }
            await await_values(base, {**expected, **counters_after})

    run(main(), timeout=240.0)
