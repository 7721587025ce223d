"""Counters of a server (``Server.stats``) and the access log (logger ``fastws.access``).

Every count is exact: a scripted load from raw clients, then the snapshot compared
whole. The Prometheus endpoint across workers is tests/test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

import fastws
from _serveproc import serving
from _wsutil import IO_TIMEOUT, RawClient, build_frame, close_payload, echo_server, port_of, until, upgrade_request
from fastws.cli import main as cli_main, metrics_address
from fastws.metrics import PING_RTT_BUCKETS, JsonFormatter, MetricsExporter, render, samples

T = IO_TIMEOUT


async def echo_round(client: RawClient, opcode: int, payload: bytes) -> None:
    client.send(build_frame(opcode, payload))
    frame = await client.read_frame()
    assert (frame.opcode, frame.payload) == (opcode, payload)


async def refused(port: int, request: bytes) -> int:
    client = await RawClient.open(port)
    client.send(request)
    head = await client.read_http_head()
    await client.read_all_until_eof()
    client.close()
    return head.status


def zero_rtt() -> dict[str, Any]:
    return {"buckets": dict.fromkeys((*PING_RTT_BUCKETS, float("inf")), 0), "sum": 0.0, "count": 0}


def test_stats_count_a_scripted_load_exactly(run: Any) -> None:
    async def main() -> dict[str, Any]:
        async with echo_server(ping_interval=None) as server:
            port = port_of(server)
            assert server.stats["connections_total"] == 0
            # 1: text and binary echoed, closed by the client with 4001.
            a = await RawClient.connect(port)
            await echo_round(a, 1, "héllo".encode())
            await echo_round(a, 2, b"\x00" * 300)
            await echo_round(a, 1, b"")
            # 2: a fragmented binary message, then a protocol error (reserved opcode 3): 1002.
            b = await RawClient.connect(port)
            b.send(build_frame(2, b"abc", fin=False) + build_frame(0, b"de"))
            assert (await b.read_frame()).payload == b"abcde"
            # 3: open while the snapshot is taken, then dropped without a close frame: 1006.
            c = await RawClient.connect(port)
            await echo_round(c, 2, b"xyz")
            live = server.stats
            assert live["connections_open"] == 3 and live["connections_total"] == 3
            assert live["messages_received"] == {"text": 2, "binary": 3}
            assert live["received_bytes"] == {"text": 6, "binary": 308}
            assert live["messages_sent"] == live["messages_received"] and live["sent_bytes"] == live["received_bytes"]
            a.send(build_frame(8, close_payload(4001)))
            assert (await a.expect_close()).payload == close_payload(4001)
            b.send(build_frame(3, b"?"))
            assert (await b.expect_close()).payload[:2] == close_payload(1002)
            c.close()
            # Refused handshakes: no key (400), a wrong version (426).
            assert await refused(port, upgrade_request(key=None)) == 400
            assert await refused(port, upgrade_request(ws_version="8")) == 426
            assert await refused(port, upgrade_request(ws_version="8")) == 426
            await until(lambda: server.stats["connections_open"] == 0 and sum(server.stats["connections_closed"].values()) == 3,
                        what="every connection counted as ended")
            for client in (a, b):
                client.close()
            return server.stats

    stats = run(main())
    assert stats == {
        "connections_open": 0,
        "connections_total": 3,
        "messages_received": {"text": 2, "binary": 3},
        "received_bytes": {"text": 6, "binary": 308},
        "messages_sent": {"text": 2, "binary": 3},
        "sent_bytes": {"text": 6, "binary": 308},
        "connections_closed": {4001: 1, 1002: 1, 1006: 1},
        "handshake_failures": {400: 1, 426: 2},
        "protocol_errors": {1002: 1},
        "write_paused": 0,
        "ping_rtt": zero_rtt(),
        "pubsub": {"published": 0, "delivered": 0, "dropped": 0, "closed_slow": 0, "received": 0, "sent": 0, "lost": 0,
                   "outages": 0, "broker_connected": False},
    }
    text = render(samples(stats))
    for line in (
        'fastws_messages_received_total{type="binary"} 3',
        'fastws_received_bytes_total{type="text"} 6',
        'fastws_connections_closed_total{code="1002"} 1',
        'fastws_handshake_failures_total{status="426"} 2',
        "# TYPE fastws_ping_rtt_seconds histogram",
        'fastws_ping_rtt_seconds_bucket{le="+Inf"} 0',
        "fastws_connections_open 0",
    ):
        assert line in text.splitlines(), line


class Subscriber(fastws.Listener):
    """Subscribes to "news" and publishes what it receives there, or broadcasts it when it is b"all"."""

    def on_connect(self, conn: fastws.Connection) -> None:
        conn.subscribe("news")

    def on_message(self, conn: fastws.Connection, data: bytes, is_text: bool) -> None:
        assert conn.server is not None
        if data == b"all":
            fastws.broadcast(conn.server.connections, "everyone")
        else:
            conn.server.publish("news", data.decode() if is_text else data)


def test_pubsub_fan_out_and_broadcast_are_counted_as_sent(run: Any) -> None:
    async def main() -> dict[str, Any]:
        server = await fastws.create_server(Subscriber, "127.0.0.1", 0, ping_interval=None)
        async with server:
            port = port_of(server)
            clients = [await RawClient.connect(port) for _ in range(3)]
            await until(lambda: server.pubsub.subscribers("news") == 3, what="three subscribers")
            clients[0].send(build_frame(1, b"hello") + build_frame(2, b"\x01\x02"))
            clients[1].send(build_frame(2, b"all"))
            for client in clients:
                frames = [await client.read_frame() for _ in range(3)]
                assert sorted((f.opcode, f.payload) for f in frames) == [(1, b"everyone"), (1, b"hello"), (2, b"\x01\x02")]
            stats = server.stats
            for client in clients:
                client.close()
            return stats

    stats = run(main())
    assert stats["messages_received"] == {"text": 1, "binary": 2}
    assert stats["messages_sent"] == {"text": 6, "binary": 3}
    assert stats["sent_bytes"] == {"text": 3 * 5 + 3 * 8, "binary": 3 * 2}
    assert stats["pubsub"]["delivered"] == 6


def test_keepalive_round_trips_go_into_the_histogram(run: Any) -> None:
    async def main() -> tuple[dict[str, Any], int]:
        async with echo_server(ping_interval=0.05, ping_timeout=None) as server:
            client = await RawClient.connect(port_of(server))
            client.send(build_frame(10, b"unsolicited"))  # not an answer to a keepalive ping: not a round trip
            answered = 0
            while answered < 3:
                ping = await client.read_frame()
                assert ping.opcode == 9 and ping.payload == b""
                if answered == 0:
                    assert server.stats["ping_rtt"]["count"] == 0
                client.send(build_frame(10, ping.payload))
                answered += 1
            await until(lambda: server.stats["ping_rtt"]["count"] >= 3, what="three round trips")
            rtt = server.stats["ping_rtt"]
            client.close()
            return rtt, answered

    rtt, answered = run(main())
    # Each answered ping is one observation (a ping left unanswered when the client went is none).
    assert rtt["count"] == answered == 3 and rtt["buckets"][float("inf")] == 3
    assert 0 < rtt["sum"] < 3 * T
    assert list(rtt["buckets"].values()) == sorted(rtt["buckets"].values())


@pytest.mark.parametrize("form", ["text", "json"])
def test_access_log_one_line_per_connection(run: Any, caplog: pytest.LogCaptureFixture, form: str) -> None:
    async def main() -> int:
        async with echo_server(ping_interval=None) as server:
            client = await RawClient.connect(port_of(server), path="/room/7?x=1")
            await echo_round(client, 1, b"abc")
            await echo_round(client, 2, b"12345")
            client.send(build_frame(8, close_payload(4002)))
            await client.expect_close()
            client.close()
            await until(lambda: server.stats["connections_closed"] == {4002: 1}, what="the connection counted as ended")
            peer = await RawClient.connect(port_of(server))
            server.close()  # 1001 to the open connection, which answers it
            closing = await peer.read_frame()
            assert closing.payload[:2] == close_payload(1001)
            peer.send(build_frame(8, closing.payload[:2]))
            await peer.read_all_until_eof()
            peer.close()
            await server.wait_closed()
            return peer.local_port

    with caplog.at_level(logging.INFO, logger="fastws.access"):
        second_port = run(main())
    records = [r for r in caplog.records if r.name == "fastws.access"]
    assert len(records) == 2
    first, second = records
    if form == "text":
        message = first.getMessage()
        assert message.startswith("127.0.0.1:") and '"/room/7?x=1"' in message
        assert message.endswith("in 2 msgs 8 B, out 2 msgs 8 B, close 4002 by client"), message
        assert second.getMessage().startswith(f"127.0.0.1:{second_port} ")
        assert second.getMessage().endswith("in 0 msgs 0 B, out 0 msgs 0 B, close 1001 by server"), second.getMessage()
    else:
        entries = [json.loads(JsonFormatter().format(r)) for r in records]
        assert entries[0]["logger"] == "fastws.access" and entries[0]["level"] == "info"
        assert {k: entries[0][k] for k in ("path", "messages_in", "bytes_in", "messages_out", "bytes_out", "close_code", "closed_by")} == {
            "path": "/room/7?x=1", "messages_in": 2, "bytes_in": 8, "messages_out": 2, "bytes_out": 8, "close_code": 4002,
            "closed_by": "client",
        }
        assert entries[1]["peer"] == f"127.0.0.1:{second_port}" and entries[1]["closed_by"] == "server"
        assert 0 <= entries[0]["duration"] < T


def test_access_log_says_nobody_closed_a_dropped_connection(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with echo_server(ping_interval=None) as server:
            client = await RawClient.connect(port_of(server))
            await echo_round(client, 1, b"x")
            client.writer.transport.abort()
            await until(lambda: server.stats["connections_closed"] == {1006: 1}, what="the drop counted")

    with caplog.at_level(logging.INFO, logger="fastws.access"):
        run(main())
    (record,) = [r for r in caplog.records if r.name == "fastws.access"]
    assert record.getMessage().endswith("close 1006 by nobody"), record.getMessage()


def test_client_connections_have_counters_too(run: Any) -> None:
    async def main() -> tuple[int, int, int, int]:
        async with echo_server(ping_interval=None) as server, fastws.connect(f"ws://127.0.0.1:{port_of(server)}/") as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), T) == "hi"
            conn = ws.conn
            assert conn is not None
            return conn.messages_sent_text, conn.bytes_sent_text, conn.messages_received_text, conn.bytes_received_text

    assert run(main()) == (1, 2, 1, 2)


# -- the command line: --metrics, --access-log, --log-format -------------------------------------


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=T) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def metrics_line(server: Any) -> str:
    line = await asyncio.to_thread(server.next_line)
    assert line is not None and line.startswith("metrics at http://127.0.0.1:") and line.endswith("/metrics"), line
    return line.removeprefix("metrics at ")


async def scrape_until(url: str, sample: str) -> str:
    """GET ``url`` until its exposition has the line ``sample``."""
    text = ""

    def ready() -> bool:
        nonlocal text
        status, text = fetch(url)
        return status == 200 and sample in text.splitlines()

    deadline = asyncio.get_running_loop().time() + T
    while not await asyncio.to_thread(ready):
        assert asyncio.get_running_loop().time() < deadline, f"{sample!r} not served within {T} s: {text}"
        await asyncio.sleep(0.05)
    return text


def test_serve_metrics_in_one_process_and_the_json_access_log(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with serving("--port", "0", "--metrics", "127.0.0.1:0", "--log-format", "json", "--loop", loop_kind) as server:
            url = await metrics_line(server)
            client = await RawClient.connect(server.port, path="/p")
            await echo_round(client, 1, b"json")
            client.send(build_frame(8, close_payload(1000)))
            await client.expect_close()
            client.close()
            text = await scrape_until(url, 'fastws_connections_closed_total{code="1000"} 1')
            assert "fastws_workers 1" in text.splitlines() and 'fastws_sent_bytes_total{type="text"} 4' in text.splitlines()
            assert text.count("# TYPE fastws_messages_sent_total counter") == 1
            assert fetch(url.replace("/metrics", "/other"))[0] == 404
            await asyncio.to_thread(server.wait_for_error_output, '"logger":"fastws.access"')
            (line,) = [line for line in server.errors().splitlines() if '"fastws.access"' in line]
            entry = json.loads(line)
            assert entry["path"] == "/p" and entry["messages_in"] == entry["messages_out"] == 1
            assert entry["bytes_in"] == entry["bytes_out"] == 4 and entry["close_code"] == 1000 and entry["closed_by"] == "client"
            assert entry["peer"] == f"127.0.0.1:{client.local_port}"

    run(main())


def test_no_access_log(run: Any) -> None:
    async def main() -> None:
        async with serving("--port", "0", "--metrics", "127.0.0.1:0", "--no-access-log") as server:
            url = await metrics_line(server)
            client = await RawClient.connect(server.port)
            client.send(build_frame(8, close_payload(1000)))
            await client.expect_close()
            client.close()
            await scrape_until(url, 'fastws_connections_closed_total{code="1000"} 1')  # the connection has ended
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.wait_for_error_output, "shutting down")  # logged after any access line
            assert "fastws.access" not in server.errors()
            assert "INFO fastws.cli: shutting down" in server.errors()  # the rest of the log goes on, as text

    run(main())


@pytest.mark.parametrize(
    ("value", "message"),
    [("nonsense", "--metrics: 'nonsense' is not [HOST:]PORT"), ("127.0.0.1:70000", "is not [HOST:]PORT"), ("in-use", "--metrics: cannot listen on")],
)
def test_bad_metrics_address_exits_2_with_one_line(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if value == "in-use":
            value = f"127.0.0.1:{busy.getsockname()[1]}"
        assert cli_main(["serve", "--port", "0", "--metrics", value]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastws: error:") and message in lines[0], err


def test_metrics_address_forms() -> None:
    assert metrics_address("9100", "0.0.0.0") == ("0.0.0.0", 9100)
    assert metrics_address("127.0.0.1:9100", "0.0.0.0") == ("127.0.0.1", 9100)
    assert metrics_address("[::1]:9100", "0.0.0.0") == ("::1", 9100)
    assert metrics_address(":9100", "10.0.0.1") == ("10.0.0.1", 9100)


def test_exporter_sums_the_slots_and_keeps_what_ended_workers_counted() -> None:
    """Without processes: two slots, one retired; gauges of an ended worker are not kept."""
    exporter = MetricsExporter("127.0.0.1", 0, 2)
    try:
        block = exporter.block
        assert block.read(0) == {}
        block.write(0, {"fastws_connections_total": 3, "fastws_connections_open": 1, 'fastws_connections_closed_total{code="1000"}': 2})
        block.write(1, {"fastws_connections_total": 5, "fastws_connections_open": 2})
        block.write(1, {"fastws_connections_total": 6, "fastws_connections_open": 2})  # the latest write wins
        exporter.workers = 2
        lines = exporter.collect().splitlines()
        assert "fastws_connections_total 9" in lines and "fastws_connections_open 3" in lines and "fastws_workers 2" in lines
        exporter.retire(0)  # worker 0 ended; its replacement starts from zero in the same slot
        assert block.read(0) == {}
        block.write(0, {"fastws_connections_total": 1, "fastws_connections_open": 1})
        exporter.worker_restarts = 1
        lines = exporter.collect().splitlines()
        assert "fastws_connections_total 10" in lines and "fastws_connections_open 3" in lines
        assert 'fastws_connections_closed_total{code="1000"} 2' in lines and "fastws_worker_restarts_total 1" in lines
        big = {f'fastws_connections_closed_total{{code="{code}"}}': 1 for code in range(10**5)}
        block.write(1, {**big, "fastws_connections_total": 7})  # too large for a slot: the unlabelled samples stay
        assert block.read(1) == {"fastws_connections_total": 7}
    finally:
        exporter.close()
