#!/usr/bin/env python3
"""Fan-out benchmark: one publisher, N subscribers, deliveries per second and server memory.

    python3 bench/fanout.py                          # 1,000 and 10,000 subscribers
    python3 bench/fanout.py --subscribers 1000 --duration 2

Servers (all in bench/servers/, same settings as bench/run.py):
    fastws-topic        fastws pub/sub topic, in-process (``server.publish``, path /pubsub)
    fastws-topic-redis  the same topic across 2 fastws processes through a local redis-server;
                        the load generator puts every odd subscriber on the second process
    fastws-broadcast    ``fastws.broadcast`` over a set of connections (/fanout)
    websockets          ``websockets.broadcast`` (/fanout)
    picows              a loop of ``transport.send`` (/fanout)

The load generator (bench/load/loadgen.c, ``--mode fanout``) keeps ``--inflight``
messages outstanding: a new one is sent whenever every subscriber got the
oldest. Deliveries = messages received by all subscribers. Server memory is
the peak RSS of the server process(es), the Redis server not included.
Uses the current interpreter with this checkout on PYTHONPATH unless
``--python`` says otherwise; it needs uvloop, websockets, picows and redis-py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402  (bench/run.py: loadgen build, pinning, /proc readers)

SERVERS = ["fastws-topic", "fastws-topic-redis", "fastws-broadcast", "websockets", "picows"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Redis:
    """A throwaway redis-server on a free port (no persistence)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastws-bench-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError("redis-server did not start")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep the pipe drained

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_servers(name: str, py: str, logdir: str, redis: Redis | None) -> tuple[list[harness.Server], str]:
    env = {"PYTHONPATH": harness.REPO}
    script, path, count = {
        "fastws-topic": ("fastws_server.py", "/pubsub", 1),
        "fastws-topic-redis": ("fastws_server.py", "/pubsub", 2),
        "fastws-broadcast": ("fastws_server.py", "/fanout", 1),
        "websockets": ("websockets_server.py", "/fanout", 1),
        "picows": ("picows_server.py", "/fanout", 1),
    }[name]
    if script == "fastws_server.py":
        env["FASTWS_EXTENSION"] = "1"
    if redis is not None:
        env["FASTWS_BENCH_BROKER"] = redis.url
    servers = []
    for i in range(count):
        server = harness.Server(f"{name}-{i}", [py, "-u", os.path.join(harness.SERVERS_DIR, script)], env, logdir)
        servers.append(server)
        if not server.wait_ready():
            for s in servers:
                s.stop()
            raise RuntimeError(f"{name} did not start: {server.stderr_tail()}")
    return servers, path


def measure(loadgen: str, servers: list[harness.Server], path: str, subscribers: int, args: argparse.Namespace) -> dict:
    cmd = [loadgen, "--port", str(servers[0].port), "--path", path, "--mode", "fanout", "--conns", str(subscribers),
           "--size", str(args.size), "--inflight", str(args.inflight), "--warmup", str(args.warmup),
           "--duration", str(args.duration)]
    if len(servers) > 1:
        cmd += ["--port2", str(servers[1].port)]
    pids = [s.proc.pid for s in servers]
    result, marks, notes, _ = harness.drive_loadgen(cmd, pids, args.warmup + args.duration + 120)
    if "MEASURE_START" in marks and "MEASURE_END" in marks:
        result["server_cpu_s"] = round(marks["MEASURE_END"][1] - marks["MEASURE_START"][1], 3)
        result["rss_end_kib"] = marks["MEASURE_END"][2]
    result["peak_rss_kib"] = sum(harness.proc_status_kib(pid, "VmHWM") for pid in pids if os.path.exists(f"/proc/{pid}"))
    if notes:
        result["notes"] = notes[:5]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", default="1000,10000", help="comma separated (default 1000,10000)")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma separated subset of: " + ",".join(SERVERS))
    ap.add_argument("--size", type=int, default=256, help="message size in bytes (default 256)")
    ap.add_argument("--inflight", type=int, default=16, help="messages outstanding (default 16)")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=1, help="repetitions, alternating the server order (median reported)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the Python servers")
    ap.add_argument("--json", help="also write the rows to this file (JSON lines)")
    args = ap.parse_args()
    servers = args.servers.split(",")
    loadgen = harness.build_loadgen()
    logdir = tempfile.mkdtemp(prefix="fastws-fanout-logs-")
    rows = []
    with harness.DmaLatency():
        for subscribers in [int(n) for n in args.subscribers.split(",")]:
            results: dict[str, list[dict]] = {}
            for rep in range(args.reps):
                for name in servers if rep % 2 == 0 else servers[::-1]:
                    redis = Redis() if name.endswith("-redis") else None
                    try:
                        procs, path = start_servers(name, args.python, logdir, redis)
                        try:
                            res = measure(loadgen, procs, path, subscribers, args)
                        finally:
                            for p in procs:
                                p.stop()
                    finally:
                        if redis is not None:
                            redis.stop()
                    results.setdefault(name, []).append(res)
                    harness.log("  %6d subscribers  %-18s %12s deliveries/s  peak RSS %6.1f MiB  srv CPU %5ss  errors %s%s" % (
                        subscribers, name, harness.fmt(res.get("msgs_per_s")), res["peak_rss_kib"] / 1024,
                        res.get("server_cpu_s"), res.get("errors"), ("  " + " | ".join(res["notes"])) if res.get("notes") else ""))
            for name in servers:
                reps = results.get(name, [])
                rows.append({"subscribers": subscribers, "server": name, "size": args.size, "inflight": args.inflight,
                             "deliveries_per_s": harness.med([r.get("msgs_per_s") for r in reps]),
                             "p50_round_us": harness.med([r.get("p50_us") for r in reps]),
                             "server_cpu_s": harness.med([r.get("server_cpu_s") for r in reps]),
                             "peak_rss_mib": round(max(r["peak_rss_kib"] for r in reps) / 1024, 1),
                             "errors": sum(r.get("errors", 0) or 0 for r in reps)})
    print()
    print("| subscribers | server | deliveries/s | x websockets | p50 round us | server CPU s | peak RSS MiB | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ref = next((r for r in rows if r["subscribers"] == row["subscribers"] and r["server"] == "websockets"), None)
        ratio = row["deliveries_per_s"] / ref["deliveries_per_s"] if ref and ref["deliveries_per_s"] and row["deliveries_per_s"] else None
        print("| %d | %s | %s | %s | %s | %s | %s | %s |" % (
            row["subscribers"], row["server"], harness.fmt(row["deliveries_per_s"]), harness.fmt(ratio, 2),
            harness.fmt(row["p50_round_us"]), row["server_cpu_s"], row["peak_rss_mib"], row["errors"]))
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
