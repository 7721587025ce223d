"""The ``fastws`` command, run as a real process: the echo server, shutdown on SIGTERM and
SIGINT (open connections get 1001, exit status 0), ``--version``, and a port in use."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trustme

import fastws
from _serveproc import NEUTRAL_CWD, child_env, serving
from _wsutil import IO_TIMEOUT, RawClient, scaled
from fastws.cli import main as cli_main

STARTUP_TIMEOUT = scaled(30.0)
async def start_server(*args: str) -> tuple[asyncio.subprocess.Process, int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(), cwd=NEUTRAL_CWD,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)  # type: ignore[union-attr]
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    match = re.search(rb"serving echo on ws://127\.0\.0\.1:(\d+)/", line)
    if match is None:
        proc.kill()
        _, err = await proc.communicate()
        raise AssertionError(f"unexpected startup line {line!r}; stderr: {err[-2000:]!r}")
    port = int(match.group(1))
    assert port != 0, "port 0 must be replaced by the bound port in the startup line"
    return proc, port, line


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, bytes]:
    """Wait for the process to exit by itself; kill it only if it does not (then fail)."""
    try:
        _, err = await asyncio.wait_for(proc.communicate(), STARTUP_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the server process did not exit") from None
    assert proc.returncode is not None
    return proc.returncode, err


def test_echo_text_and_binary(run: Any) -> None:
    async def main() -> None:
        proc, port, line = await start_server()
        try:
            assert (b"compiled" in line) == fastws.USING_EXTENSION
            async with fastws.connect(f"ws://127.0.0.1:{port}/") as ws:
                for message in ["hello ✓", b"\x00\x01\xff", "", b"x" * 70000]:
                    await ws.send(message)
                    echoed = await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
                    assert type(echoed) is type(message) and echoed == message
        finally:
            proc.send_signal(signal.SIGTERM)
            code, err = await stop(proc)
        assert code == 0, err[-2000:]

    run(main(), timeout=60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_open_connections_with_1001_and_exits_0(run: Any, sig: signal.Signals) -> None:
    async def main() -> None:
        proc, port, _ = await start_server()
        signalled = False
        try:
            ws = await fastws.connect(f"ws://127.0.0.1:{port}/")
            await ws.send("are you there")
            assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "are you there"
            proc.send_signal(sig)
            signalled = True
            with pytest.raises(fastws.ConnectionClosedOK) as info:
                await asyncio.wait_for(ws.recv(), STARTUP_TIMEOUT)
            assert info.value.code == 1001
        finally:
            if not signalled:
                proc.send_signal(signal.SIGTERM)
            code, err = await stop(proc)
        assert code == 0, err[-2000:]
        assert b"Traceback" not in err, err[-2000:]

    run(main(), timeout=60)


def test_version_prints_version_hot_path_and_event_loop() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastws", "--version"], capture_output=True, text=True, timeout=STARTUP_TIMEOUT, env=child_env(), cwd=NEUTRAL_CWD
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"fastws {fastws.__version__}"
    hot = [line for line in lines if line.startswith("hot path: ")]
    loop = [line for line in lines if line.startswith("event loop: ")]
    assert len(hot) == 1 and len(loop) == 1, lines
    if fastws.USING_EXTENSION:
        assert hot[0].startswith("hot path: compiled extension"), hot
    else:
        assert hot[0] == "hot path: pure Python (no compiled extension)", hot
    assert loop[0] in ("event loop: uvloop", "event loop: asyncio")
    tls = [line for line in lines if line.startswith("tls: ")]
    own = fastws._accel.TLS_AVAILABLE
    assert len(tls) == 1 and tls[0].startswith("tls: fastws's own transport" if own else "tls: the event loop's"), tls


def test_version_follows_fastws_extension_0() -> None:
    env = child_env()
    env["FASTWS_EXTENSION"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "fastws", "--version"], capture_output=True, text=True, timeout=STARTUP_TIMEOUT, env=env, cwd=NEUTRAL_CWD
    )
    assert result.returncode == 0, result.stderr
    assert "hot path: pure Python (no compiled extension)" in result.stdout.splitlines()


def test_port_in_use_exits_2_with_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "fastws", "serve", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=STARTUP_TIMEOUT, env=child_env(), cwd=NEUTRAL_CWD,
        )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastws: error:") and str(port) in lines[0]
    assert result.stdout == ""


def test_no_command_prints_help_and_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastws"], capture_output=True, text=True, timeout=STARTUP_TIMEOUT, env=child_env(), cwd=NEUTRAL_CWD
    )
    assert result.returncode == 2
    assert "serve" in result.stdout


# -- apps, options and the interactive client (issue 6) ---------------------------------------


def test_chat_rooms_reach_every_member_sender_included(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with serving("chat", "--port", "0", "--loop", loop_kind) as server:
            uri = f"ws://127.0.0.1:{server.port}"
            alice = await fastws.connect(f"{uri}/lobby")
            bob = await fastws.connect(f"{uri}/lobby")
            carol = await fastws.connect(f"{uri}/kitchen")
            await alice.send("hi all")
            await bob.send(b"\x00binary\xff")
            for member in (alice, bob):
                assert await asyncio.wait_for(member.recv(), IO_TIMEOUT) == "hi all"
                assert await asyncio.wait_for(member.recv(), IO_TIMEOUT) == b"\x00binary\xff"
            await carol.send("anyone?")
            assert await asyncio.wait_for(carol.recv(), IO_TIMEOUT) == "anyone?", "other rooms heard nothing first"
            for ws in (alice, bob, carol):
                await ws.close()
            assert await asyncio.to_thread(server.stop) == 0

    run(main(), timeout=60)


APP_MODULE = '''
import os
import fastws

async def shout(ws):
    await ws.send(f"handler in {os.getpid()}")
    async for message in ws:
        await ws.send(message.upper())

class Reverse(fastws.Listener):
    def on_message(self, conn, data, is_text):
        conn.send(data[::-1], is_text)

not_an_app = 42
'''


def test_module_callable_app_handler_or_listener(run: Any, loop_kind: str, tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(APP_MODULE))

    async def main() -> None:
        async with serving("myapp:shout", "--port", "0", "--loop", loop_kind, cwd=str(tmp_path)) as server:
            assert "serving myapp:shout on ws://" in server.startup_line
            async with fastws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == f"handler in {server.proc.pid}"
                await ws.send("quiet")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "QUIET"
        async with serving("myapp:Reverse", "--port", "0", "--loop", loop_kind, cwd=str(tmp_path)) as server:
            async with fastws.connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send("abc")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "cba"

    run(main(), timeout=60)


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown app 'nope'"),
        (["no_such_module_xyz:app"], "cannot import module 'no_such_module_xyz'"),
        (["fastws.apps:Nothing"], "has no attribute 'Nothing'"),
        (["myapp_for_errors:not_an_app"], "neither a handler coroutine function nor a fastws.Listener subclass"),
        (["--ssl-certfile", "/no/such/cert.pem"], "--ssl-certfile: no such file: /no/such/cert.pem"),
        (["--ssl-keyfile", "/no/such/key.pem"], "--ssl-keyfile needs --ssl-certfile"),
        (["--ssl-certfile", "myapp_for_errors.py"], "cannot load the certificate myapp_for_errors.py"),
    ],
    ids=["unknown-app", "missing-module", "missing-attribute", "not-callable", "missing-cert", "key-without-cert", "bad-cert"],
)
def test_bad_serve_arguments_exit_2_with_one_line(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """In process (``main(argv)`` is what the command runs): the checks come before any socket."""
    (tmp_path / "myapp_for_errors.py").write_text(textwrap.dedent(APP_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() adds the current directory
    request.addfinalizer(lambda: sys.modules.pop("myapp_for_errors", None))
    assert cli_main(["serve", "--port", "0", *args]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastws: error:"), err
    assert message in lines[0]
    assert out == ""


@pytest.mark.parametrize("args", [["--workers", "0"], ["--port", "70000"], ["--max-size", "-1"], ["--compression", "gzip"], ["--loop", "trio"]])
def test_argument_out_of_range_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["serve", *args])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_wss_with_certificate_files(run: Any, loop_kind: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def main() -> None:
        args = ("--port", "0", "--loop", loop_kind, "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem"))
        async with serving(*args) as server:
            assert f"serving echo on wss://127.0.0.1:{server.port}/" in server.startup_line
            async with fastws.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_context) as ws:
                await ws.send("secret")
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "secret"
            with pytest.raises(ssl.SSLCertVerificationError):
                await fastws.connect(f"wss://127.0.0.1:{server.port}/")  # the system trust store does not know it

    run(main(), timeout=60)


def test_serve_options_reach_the_server(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        args = ("--port", "0", "--loop", loop_kind, "--max-size", "100", "--compression", "deflate", "--ping-interval", "0.2")
        async with serving(*args) as server:
            assert server.startup_line.endswith(f", {loop_kind})")
            async with fastws.connect(f"ws://127.0.0.1:{server.port}/", compression="deflate") as ws:
                assert ws.response is not None
                assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
                await ws.send("x" * 100)
                assert await asyncio.wait_for(ws.recv(), IO_TIMEOUT) == "x" * 100
                await ws.send("x" * 101)
                with pytest.raises(fastws.ConnectionClosedError) as info:
                    await asyncio.wait_for(ws.recv(), IO_TIMEOUT)
                assert info.value.code == 1009
            raw = await RawClient.connect(server.port)
            try:
                frame = await raw.read_frame()  # sent by keepalive after 0.2 s
                assert frame.opcode == 9
            finally:
                raw.close()

    run(main(), timeout=60)


def test_connect_sends_typed_lines_and_prints_messages(run: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with serving("--port", "0") as server:
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fastws", "connect", f"ws://127.0.0.1:{server.port}/", "--loop", loop_kind,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=child_env(), cwd=NEUTRAL_CWD,
            )
            try:
                assert client.stdin is not None and client.stdout is not None
                first = await asyncio.wait_for(client.stdout.readline(), STARTUP_TIMEOUT)
                assert first.startswith(b"connected to ws://127.0.0.1:")
                for line in ["hello", "héllo ✓"]:
                    client.stdin.write(line.encode() + b"\n")
                    await client.stdin.drain()
                    echoed = await asyncio.wait_for(client.stdout.readline(), IO_TIMEOUT)
                    assert echoed.decode().rstrip("\n") == f"< {line}"
                client.stdin.close()  # Ctrl-D: close with 1000
                out, err = await asyncio.wait_for(client.communicate(), IO_TIMEOUT)
                assert client.returncode == 0, err
                assert out.decode().strip().splitlines()[-1] == "connection closed: 1000"
            finally:
                if client.returncode is None:
                    client.kill()
                    await client.wait()

    run(main(), timeout=60)


def test_connect_to_nothing_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        assert cli_main(["connect", f"ws://127.0.0.1:{port}/"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastws: cannot connect to ws://127.0.0.1:{port}/"), lines
    assert cli_main(["connect", "http://example.com/"]) == 2
    assert capsys.readouterr().err.startswith("fastws: error:")
