#!/usr/bin/env python3
"""Fan-out through the brokers: P publisher processes, S server processes x C subscribers each.

    python3 bench/fanout_brokers.py                                   # every broker, S = 1 and 2
    python3 bench/fanout_brokers.py --brokers nats --servers 1,2,4 --subscribers 500

Subscribers are spread over ``--topics`` topics (``/pubsub/NAME`` of
bench/servers/fastws_server.py: a connection subscribes to NAME, and every message
it sends is published to NAME). Each publisher connection keeps ``--inflight`` of
its own messages outstanding on its topic: it sends the next when one of its own
comes back. With one topic, each publisher process has one connection on it;
with more, the processes share the topics, one connection per topic. The subscribers (one process, raw sockets, never
parsing) count the bytes they receive; deliveries = bytes / frame size.

Brokers: ``memory`` (one server process, no broker: the ceiling), ``redis``
(one redis-server), ``redis-cluster`` (3 primaries, sharded pub/sub), ``nats``
(one nats-server), all on free loopback ports, started and stopped here.
Reported: deliveries/s, and deliveries per CPU-second of the servers plus the
broker (the load generators' CPU is not counted, but they share the machine).
Every process runs ``--python`` (default: this interpreter) with the fastws
installed there, compiled (``FASTWS_EXTENSION=1``).
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "servers", "fastws_server.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")
BROKERS = ["memory", "redis", "redis-cluster", "nats"]
HANDSHAKE = ("GET /pubsub/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_s(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def frame_size(payload: int) -> int:
    return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)


class Proc:
    """A child process started until a line containing ``ready`` (its log is drained after)."""

    def __init__(self, argv: list[str], ready: str, env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, **(env or {})), cwd=cwd)
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if ready in line:
                break
        else:
            raise RuntimeError("%s did not start: %s" % (argv[0], "".join(self.lines[-5:])))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Broker:
    """The broker's server processes and the URL the fastws servers get."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.procs: list[Proc] = []
        self.dir = tempfile.mkdtemp(prefix="fastws-bench-broker-")
        self.url = ""
        if kind == "redis":
            port = free_port()
            self.procs.append(self._redis(port, []))
            self.url = "redis://127.0.0.1:%d/0" % port
        elif kind == "redis-cluster":
            ports = [free_port() for _ in range(3)]
            for i, port in enumerate(ports):
                node_dir = os.path.join(self.dir, str(i))
                os.mkdir(node_dir)
                self.procs.append(self._redis(port, ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                                                     "--cluster-config-file", "nodes.conf", "--dir", node_dir]))
            subprocess.run(["redis-cli", "--cluster", "create", *["127.0.0.1:%d" % p for p in ports], "--cluster-replicas", "0",
                            "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self.url = "redis-cluster://" + ",".join("127.0.0.1:%d" % p for p in ports)
        elif kind == "nats":
            port = free_port()
            self.procs.append(Proc(["nats-server", "-a", "127.0.0.1", "-p", str(port)], "Server is ready"))
            self.url = "nats://127.0.0.1:%d" % port

    def _redis(self, port: int, extra: list[str]) -> Proc:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir]
        return Proc(argv + extra, "Ready to accept connections")

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the load generators (run as this script's child processes) ------------------------


def upgrade(port: int, topic: str) -> tuple[socket.socket, bytes]:
    """A raw WebSocket connection to ``/pubsub/TOPIC``, non-blocking; and the bytes that followed the 101."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(HANDSHAKE.format(topic=topic).encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("the server closed the connection during the handshake")
        received += chunk
    head, _, early = received.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101 "):
        raise SystemExit("not upgraded: %r" % head[:80])
    sock.setblocking(False)
    return sock, early


def subscriber_main(ports: list[int], per_server: int, topics: int) -> None:
    """Open ``per_server`` subscribers on each port, spread over the topics t0, t1...; answer
    each line on stdin with the byte count."""
    sel = selectors.DefaultSelector()
    socks = []
    total = 0  # bytes of frames received (what came with the 101 included)
    for port in ports:
        for i in range(per_server):
            sock, early = upgrade(port, "t%d" % (i % topics))
            total += len(early)
            sel.register(sock, selectors.EVENT_READ)
            socks.append(sock)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    buf = bytearray(1 << 20)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sys.stdin:
                if not sys.stdin.readline():
                    return
                print(total, flush=True)
                continue
            try:
                n = key.fileobj.recv_into(buf)
            except BlockingIOError:
                continue
            if n == 0:
                sel.unregister(key.fileobj)
            total += n


def publisher_main(port: int, topics: list[str], ident: int, size: int, inflight: int) -> None:
    """One connection per topic, each keeping ``inflight`` of its own messages outstanding."""
    import asyncio

    import fastws

    async def publish(topic: str, index: int) -> None:
        ws = await fastws.connect("ws://127.0.0.1:%d/pubsub/%s" % (port, topic), max_size=1 << 20)
        message = bytes([ident, index % 256]) + b"x" * (size - 2)
        for _ in range(inflight):
            await ws.send(message)
        while True:
            got = await ws.recv()
            if got[:2] == message[:2]:
                await ws.send(message)

    async def run() -> None:
        tasks = [asyncio.ensure_future(publish(topic, i)) for i, topic in enumerate(topics)]
        print("ready", flush=True)
        await asyncio.gather(*tasks)

    asyncio.run(run())


# -- one measurement ----------------------------------------------------------------------


def measure(kind: str, servers: int, args: argparse.Namespace) -> dict:
    broker = Broker(kind)
    procs: list[Proc] = []
    try:
        env = {"FASTWS_EXTENSION": "1"}
        if broker.url:
            env["FASTWS_BENCH_BROKER"] = broker.url
        ports = []
        for _ in range(servers):
            server = Proc([args.python, "-u", SERVER], "PORT ", env=env, cwd=os.path.dirname(SERVER))
            procs.append(server)
            ports.append(int(server.lines[-1].split()[1]))
        me = [args.python, os.path.abspath(__file__)]
        subs = subprocess.Popen(me + ["--subscriber", ",".join(map(str, ports)), str(args.subscribers), str(args.topics)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert subs.stdout.readline().strip() == "ready"
        time.sleep(args.settle)  # the brokers subscribe in the background: give them a moment
        # Publisher process i takes the topics j with j mod P == i, each on one connection to server j mod S.
        pubs = []
        for i in range(min(args.publishers, args.topics) if args.topics > 1 else args.publishers):
            mine = [j for j in range(args.topics) if j % args.publishers == i] or [0]
            pubs.append(Proc(me + ["--publisher", str(ports[i % servers]), ",".join("t%d" % j for j in mine), str(i + 1),
                                   str(args.size), str(args.inflight)], "ready"))
        time.sleep(args.warmup)

        def sample() -> tuple[float, int, float, float]:
            subs.stdin.write("\n")
            subs.stdin.flush()
            count = int(subs.stdout.readline())
            return (time.monotonic(), count, sum(cpu_s(p.proc.pid) for p in procs), sum(cpu_s(pid) for pid in broker.pids))

        t0, b0, s0, k0 = sample()
        time.sleep(args.duration)
        t1, b1, s1, k1 = sample()
        rss = sum(rss_kib(p.proc.pid) for p in procs)
        for p in pubs:
            p.stop()
        subs.stdin.close()
        subs.wait(10)
        deliveries = (b1 - b0) / frame_size(args.size) / (t1 - t0)
        cpu = (s1 - s0) + (k1 - k0)
        return {"broker": kind, "servers": servers, "publishers": args.publishers, "subscribers_per_server": args.subscribers,
                "topics": args.topics,
                "size": args.size, "deliveries_per_s": round(deliveries),
                "per_cpu_s": round((b1 - b0) / frame_size(args.size) / cpu) if cpu else None,
                "server_cpu": round((s1 - s0) / (t1 - t0), 2), "broker_cpu": round((k1 - k0) / (t1 - t0), 2),
                "server_rss_kib": rss}
    finally:
        for p in procs:
            p.stop()
        broker.stop()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        subscriber_main([int(p) for p in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--publisher":
        publisher_main(int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default=",".join(BROKERS), help="comma separated subset of: " + ",".join(BROKERS))
    ap.add_argument("--servers", default="1,2", help="server process counts, comma separated (memory: 1 only)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    ap.add_argument("--subscribers", type=int, default=500, help="subscribers per server process (default 500)")
    ap.add_argument("--topics", type=int, default=1,
                    help="topics t0..tN-1: subscribers spread over them, publisher i on topic i mod N (default 1)")
    ap.add_argument("--size", type=int, default=256, help="message size in bytes (default 256)")
    ap.add_argument("--inflight", type=int, default=8, help="own messages outstanding per publisher (default 8)")
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=1, help="repetitions, alternating the order (medians reported)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", help="also append the rows to this file (JSON lines)")
    args = ap.parse_args()
    configs = [(kind, servers) for kind in args.brokers.split(",") for servers in [int(n) for n in args.servers.split(",")]
               if kind != "memory" or servers == 1]
    results: dict[tuple[str, int], list[dict]] = {}
    for rep in range(args.reps):
        for kind, servers in configs if rep % 2 == 0 else configs[::-1]:  # alternate the order: the machine drifts
            row = measure(kind, servers, args)
            results.setdefault((kind, servers), []).append(row)
            print("%-14s T=%d S=%d P=%d C=%d  %10s deliveries/s  %10s per CPU-s  servers %.2f CPU  broker %.2f CPU" % (
                kind, args.topics, servers, args.publishers, args.subscribers, "{:,}".format(row["deliveries_per_s"]),
                "{:,}".format(row["per_cpu_s"] or 0), row["server_cpu"], row["broker_cpu"]), flush=True)
    rows = []
    for config in configs:
        reps = results[config]
        row = dict(reps[0], reps=len(reps))
        for key in ("deliveries_per_s", "per_cpu_s", "server_cpu", "broker_cpu", "server_rss_kib"):
            row[key] = statistics.median([r[key] or 0 for r in reps])
        rows.append(row)
    print()
    print("| broker | topics | servers x subscribers | publishers | deliveries/s | per CPU-second | server CPU | broker CPU | server RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| %s | %d | %d x %d | %d | %s | %s | %.2f | %.2f | %.1f |" % (
            row["broker"], row["topics"], row["servers"], row["subscribers_per_server"], row["publishers"],
            "{:,}".format(round(row["deliveries_per_s"])), "{:,}".format(round(row["per_cpu_s"])),
            row["server_cpu"], row["broker_cpu"], row["server_rss_kib"] / 1024))
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
