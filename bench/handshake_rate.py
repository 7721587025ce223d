"""Handshakes per second: N sequential connects and closes against a local fastws server.

The server runs in a subprocess (``fastws.serve`` with an echo handler) so that the
client and the server each have a core. Two clients:

* ``fastws``: ``fastws.connect`` then ``close()`` (both sides' handshake drivers and
  the closing handshake);
* ``raw``: a blocking socket sends a fixed upgrade request, reads the 101 and closes
  TCP (the server's opening handshake almost alone).

    python bench/handshake_rate.py -n 2000 [--client raw|fastws|both] [--loop uvloop]
        [--compression deflate] [--rounds 3]

Prints one line per client: the best of ``--rounds`` rates, and every round's; and the
CPU time per handshake of the server process (/proc/PID/task/*/schedstat, in ns) and,
for the fastws client, of the client process, the least over the rounds: on a busy
machine these move far less than the rates. Loopback only; bounded by ``-n`` and ``--rounds``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

SERVER = """
import asyncio, sys, fastws
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    kwargs = {"compression": sys.argv[2]} if sys.argv[2] != "off" else {}
    async with fastws.serve(echo, "127.0.0.1", 0, **kwargs) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
fastws.run(main(), use_uvloop=sys.argv[1] == "uvloop")
"""

REQUEST = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads so far, in nanoseconds' precision (Linux schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that just ended
            pass
    return total / 1e9


def raw_round(port: int, n: int, compression: str) -> float:
    extra = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if compression != "off" else ""
    request = REQUEST.format(port=port, extra=extra).encode()
    start = time.perf_counter()
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("server closed during the handshake")
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 101 "):
                raise RuntimeError(f"not a 101: {answer[:80]!r}")
    return n / (time.perf_counter() - start)


def fastws_round(port: int, n: int, compression: str, loop: str) -> tuple[float, float]:
    """The rate, and the client's CPU seconds per handshake."""
    import fastws

    async def main() -> tuple[float, float]:
        uri = f"ws://127.0.0.1:{port}/"
        kwargs = {"compression": compression} if compression != "off" else {}
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            ws = await fastws.connect(uri, **kwargs)
            await ws.close()
        return n / (time.perf_counter() - start), (time.process_time() - cpu) / n

    return fastws.run(main(), use_uvloop=loop == "uvloop")  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="handshakes per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported (default 3)")
    parser.add_argument("--client", choices=["raw", "fastws", "both"], default="both")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="both sides' event loop")
    parser.add_argument("--compression", choices=["off", "deflate"], default="off")
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, args.loop, args.compression], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        clients = ["raw", "fastws"] if args.client == "both" else [args.client]
        for client in clients:
            rates: list[float] = []
            server_cpu: list[float] = []
            client_cpu: list[float] = []
            for _ in range(args.rounds):
                before = cpu_seconds(server.pid)
                if client == "raw":
                    rates.append(raw_round(port, args.n, args.compression))
                else:
                    rate, cpu = fastws_round(port, args.n, args.compression, args.loop)
                    rates.append(rate)
                    client_cpu.append(cpu)
                server_cpu.append((cpu_seconds(server.pid) - before) / args.n)
            cpu_text = f"server {min(server_cpu) * 1e6:5.0f} us" + (f", client {min(client_cpu) * 1e6:5.0f} us" if client_cpu else "")
            print(
                f"{client:6} loop={args.loop} compression={args.compression} extension={os.environ.get('FASTWS_EXTENSION', 'auto')}:"
                f" {max(rates):6.0f} handshakes/s; CPU per handshake: {cpu_text}"
                f" (rates: {', '.join(f'{r:.0f}' for r in rates)})",
                flush=True,
            )
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
