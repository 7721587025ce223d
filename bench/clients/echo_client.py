"""One client library driving the C echo server (bench/load/echo_server.c): the client benchmarks.

    echo_client.py --client NAME --port P [--conns N] [--size BYTES] [--warmup S] [--duration S]

NAME is one of ``fastws`` (the ``Listener`` API), ``fastws-await`` (``await ws.send`` /
``await ws.recv``), ``picows`` (``WSListener``, its fastest documented setup),
``websockets`` (its asyncio client) and ``aiohttp`` (``ClientSession.ws_connect``); all
on uvloop, compression and automatic pings off. Each of the N connections sends a
binary message of BYTES, waits for its echo (checked: length, first and last 16
bytes), and sends again. After the warm-up it prints ``MEASURE_START`` on stderr,
after the measured window ``MEASURE_END`` (bench/run.py samples the server's CPU
then), and finally one JSON object on stdout: messages, msgs_per_s, client_cpu_s
(this process's user+system time in the window) and msgs_per_client_cpu_s, the
headline number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import time
from importlib.metadata import version

import uvloop

CLIENTS = ["fastws", "fastws-await", "picows", "websockets", "aiohttp"]
MAX_SIZE = 32 * 1024 * 1024


class Meter:
    """Counts verified echoes; the measured window is between ``start`` and ``end``."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.head, self.tail = payload[:16], payload[-16:]
        self.count = 0
        self.errors = 0
        self.stopping = False
        self.marks: dict[str, tuple[float, float, int]] = {}

    def check(self, data) -> None:
        """One echo arrived (bytes or memoryview)."""
        if len(data) == len(self.payload) and data[:16] == self.head and data[-16:] == self.tail:
            self.count += 1
        else:
            self.errors += 1

    def mark(self, name: str) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.marks[name] = (time.monotonic(), usage.ru_utime + usage.ru_stime, self.count)
        print(name, file=sys.stderr, flush=True)


# -- the clients: each opens its connections and keeps one message in flight on each -----------


async def run_fastws(uri: str, conns: int, meter: Meter) -> list:
    import fastws

    payload = meter.payload

    class Echo(fastws.Listener):
        def on_connect(self, conn):
            conn.send(payload)

        def on_message(self, conn, data, is_text):
            meter.check(data)
            if not meter.stopping:
                conn.send(payload)

    options = dict(max_size=MAX_SIZE, ping_interval=None, compression=None, proxy=None)
    connections = [await fastws.create_connection(Echo, uri, **options) for _ in range(conns)]
    return [conn.close for conn in connections]


def await_loops(meter: Meter, sockets: list, send: str, recv: str, unwrap: bool = False) -> list:
    """A task per connection: ``await ws.<send>(payload)``, ``await ws.<recv>()``, check, again."""
    payload = meter.payload

    async def loop(ws):
        send_message, receive = getattr(ws, send), getattr(ws, recv)
        while not meter.stopping:
            await send_message(payload)
            message = await receive()
            meter.check(message.data if unwrap else message)

    tasks = [asyncio.create_task(loop(ws)) for ws in sockets]
    return [lambda t=t: t.cancel() for t in tasks] + [ws.close for ws in sockets]


async def run_fastws_await(uri: str, conns: int, meter: Meter) -> list:
    import fastws

    options = dict(max_size=MAX_SIZE, ping_interval=None, compression=None, proxy=None)
    return await_loops(meter, [await fastws.connect(uri, **options) for _ in range(conns)], "send", "recv")


async def run_picows(uri: str, conns: int, meter: Meter) -> list:
    from picows import WSListener, WSMsgType, ws_connect

    payload = meter.payload

    class Echo(WSListener):
        def on_ws_connected(self, transport):
            transport.send(WSMsgType.BINARY, payload)

        def on_ws_frame(self, transport, frame):
            if frame.msg_type is WSMsgType.BINARY:
                meter.check(frame.get_payload_as_memoryview())
                if not meter.stopping:
                    transport.send(WSMsgType.BINARY, payload)

    transports = [(await ws_connect(Echo, uri, max_frame_size=MAX_SIZE, enable_auto_ping=False))[0] for _ in range(conns)]
    return [t.disconnect for t in transports]


async def run_websockets(uri: str, conns: int, meter: Meter) -> list:
    from websockets.asyncio.client import connect

    sockets = [await connect(uri, compression=None, max_size=MAX_SIZE, ping_interval=None) for _ in range(conns)]
    return await_loops(meter, sockets, "send", "recv")


async def run_aiohttp(uri: str, conns: int, meter: Meter) -> list:
    import aiohttp

    session = aiohttp.ClientSession()
    sockets = [await session.ws_connect(uri, compress=0, max_msg_size=MAX_SIZE, autoping=True, heartbeat=None) for _ in range(conns)]
    return await_loops(meter, sockets, "send_bytes", "receive", unwrap=True) + [session.close]


RUNNERS = {
    "fastws": (run_fastws, "fastws", "Listener"),
    "fastws-await": (run_fastws_await, "fastws", "await"),
    "picows": (run_picows, "picows", "WSListener"),
    "websockets": (run_websockets, "websockets", "asyncio client"),
    "aiohttp": (run_aiohttp, "aiohttp", "ws_connect"),
}


async def main(args: argparse.Namespace) -> dict:
    runner, dist, api = RUNNERS[args.client]
    meter = Meter(os.urandom(args.size))
    uri = f"ws://{args.host}:{args.port}/"
    closers = await runner(uri, args.conns, meter)
    await asyncio.sleep(args.warmup)
    meter.mark("MEASURE_START")
    await asyncio.sleep(args.duration)
    meter.mark("MEASURE_END")
    meter.stopping = True
    for close in closers:  # not measured
        result = close()
        if asyncio.iscoroutine(result):
            try:
                await asyncio.wait_for(result, 5)
            except Exception:
                pass
    (t0, cpu0, n0), (t1, cpu1, n1) = meter.marks["MEASURE_START"], meter.marks["MEASURE_END"]
    messages, cpu = n1 - n0, cpu1 - cpu0
    info = {
        "client": args.client,
        "library": dist,
        "version": version(dist),
        "api": api,
        "loop": "uvloop " + uvloop.__version__,
        "python": platform.python_version(),
    }
    if dist == "fastws":
        import fastws

        info["extension"] = fastws.USING_EXTENSION
    return dict(
        info,
        messages=messages,
        msgs_per_s=round(messages / (t1 - t0), 1),
        mb_per_s=round(messages * args.size / (t1 - t0) / 1e6, 2),
        client_cpu_s=round(cpu, 3),
        msgs_per_client_cpu_s=round(messages / cpu, 1) if cpu > 0 else None,
        duration_s=round(t1 - t0, 4),
        errors=meter.errors + (0 if messages else 1),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", required=True, choices=CLIENTS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=2.0)
    arguments = parser.parse_args()
    print(json.dumps(uvloop.run(main(arguments))), flush=True)
