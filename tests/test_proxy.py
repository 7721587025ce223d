"""Connecting through proxies: real pproxy servers (HTTP CONNECT, SOCKS4/5, with and without
auth, HTTP CONNECT over TLS) on free loopback ports, proxies chosen by argument and by the
environment (``NO_PROXY`` too), and proxies that refuse, lie or never answer."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

import fastws
from _proxies import Proxies, pproxy
from _serveproc import NEUTRAL_CWD, child_env
from _wsutil import IO_TIMEOUT, RawClient, echo_handler, port_of, raw_server, scaled
from fastws import _accel
from fastws.cli import main as cli_main
from fastws.proxy import HttpConnect, ProxyURL, bypasses_proxy, parse_proxy, proxy_for

T = IO_TIMEOUT
USER, PASSWORD = "alice", "s3cret:x"  # a colon in the password: only the first one splits

# The order of the URIs given to pproxy, and so of Proxies.ports.
HTTP, HTTP_AUTH, SOCKS5, SOCKS5_AUTH, SOCKS4 = range(5)


@pytest.fixture(scope="module")
def cert_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tls") / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def server_context(cert_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file)
    return context


@pytest.fixture(scope="module")
def proxy_servers() -> Iterator[Proxies]:
    auth = f"#{USER}:{PASSWORD}"
    with pproxy(
        "http://127.0.0.1:0",
        f"http://127.0.0.1:0{auth}",
        "socks5://127.0.0.1:0",
        f"socks5://127.0.0.1:0{auth}",
        "socks4://127.0.0.1:0",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def tls_proxy_server(cert_file: str) -> Iterator[Proxies]:
    """HTTP CONNECT spoken over TLS to the proxy (an https:// proxy URL)."""
    with pproxy("http+ssl://127.0.0.1:0", cert=cert_file) as running:
        yield running


@pytest.fixture
def proxies(proxy_servers: Proxies) -> Proxies:
    """The module's proxies, their log read from this test's start."""
    return proxy_servers.start_log()


@pytest.fixture
def tls_proxy(tls_proxy_server: Proxies) -> Proxies:
    return tls_proxy_server.start_log()


def url(proxies: Proxies, which: int, scheme: str | None = None, auth: str = "") -> str:
    default = {HTTP: "http", HTTP_AUTH: "http", SOCKS5: "socks5", SOCKS5_AUTH: "socks5", SOCKS4: "socks4"}[which]
    return f"{scheme or default}://{auth}127.0.0.1:{proxies.ports[which]}"


def tunnels_to(proxies: Proxies, target: str) -> int:
    """How many connections the proxies opened to ``target`` (host:port), by their log."""
    return sum(line.endswith(f"-> {target}") for line in proxies.log().splitlines())


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the machine leaks into a test; the test sets its own."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def echo_once(uri: str, message: str = "through the proxy", **options: Any) -> fastws.WebSocket:
    async with fastws.connect(uri, open_timeout=T, **options) as ws:
        await ws.send(message)
        assert await asyncio.wait_for(ws.recv(), T) == message
    assert ws.close_code == 1000
    return ws


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A loopback port whose connections the kernel completes but nobody ever reads or answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# -- through real proxies, by argument ---------------------------------------------------------


@pytest.mark.parametrize("which", [HTTP, SOCKS5, SOCKS4])
def test_echo_through_a_proxy(run: Any, proxies: Proxies, no_proxy_env: Any, which: int) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            target = f"127.0.0.1:{port_of(server)}"
            async with fastws.connect(f"ws://{target}/", proxy=url(proxies, which), open_timeout=T) as ws:
                # Plaintext through the tunnel still moves onto fastws's own transport.
                if _accel.SocketTransport is not None:
                    assert isinstance(ws.conn.transport, _accel.SocketTransport)
                for message in ["hello", b"\x00" * 100_000, "é" * 1000]:
                    await ws.send(message)
                    assert await asyncio.wait_for(ws.recv(), T) == message
            assert ws.close_code == 1000
            assert tunnels_to(proxies, target) == 1

    run(main())


@pytest.mark.parametrize("which", [HTTP_AUTH, SOCKS5_AUTH])
def test_proxy_auth_right_missing_and_wrong(run: Any, proxies: Proxies, no_proxy_env: Any, which: int) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            uri = f"ws://127.0.0.1:{port_of(server)}/"
            quoted = f"{USER}:{PASSWORD.replace(':', '%3A')}@"
            await echo_once(uri, proxy=url(proxies, which, auth=quoted))
            with pytest.raises(fastws.ProxyError) as missing:
                await fastws.connect(uri, proxy=url(proxies, which), open_timeout=T)
            with pytest.raises(fastws.ProxyError) as wrong:
                await fastws.connect(uri, proxy=url(proxies, which, auth=f"{USER}:nope@"), open_timeout=T)
            assert "nope" not in str(wrong.value) and PASSWORD not in str(wrong.value)
            if which == HTTP_AUTH:
                assert missing.value.status == wrong.value.status == 407
                assert "wants credentials" in str(missing.value)
                assert "credentials were refused" in str(wrong.value)
            else:
                assert missing.value.status is wrong.value.status is None

    run(main())


def test_socks5h_lets_the_proxy_resolve_the_name(run: Any, proxies: Proxies, no_proxy_env: Any) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            port = port_of(server)
            await echo_once(f"ws://localhost:{port}/", proxy=url(proxies, SOCKS5, "socks5h"))
            assert tunnels_to(proxies, f"localhost:{port}") == 1  # the proxy got the name
            await echo_once(f"ws://localhost:{port}/", proxy=url(proxies, SOCKS5, "socks5"))
            assert tunnels_to(proxies, f"localhost:{port}") == 1  # the client resolved it: an address
            assert tunnels_to(proxies, f"127.0.0.1:{port}") == 1

    run(main())


@pytest.mark.parametrize("which", [HTTP, SOCKS5])
def test_wss_through_a_proxy(
    run: Any, proxies: Proxies, no_proxy_env: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext, which: int
) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context) as server:
            uri = f"wss://localhost:{port_of(server)}/"
            ws = await echo_once(uri, proxy=url(proxies, which), ssl=client_context)
            assert ws.conn.transport.get_extra_info("ssl_object") is not None
            # A plain tunnel is a TCP stream: TLS to the server runs on fastws's own transport.
            assert (type(ws.conn.transport).__name__ == "TLSTransport") == _accel.TLS_AVAILABLE
            assert ws.conn.transport.get_extra_info("ssl_object").server_hostname == "localhost"
            # The certificate is checked against the server's name, not the proxy's.
            with pytest.raises(ssl.SSLCertVerificationError):
                await fastws.connect(uri, proxy=url(proxies, which), ssl=client_context, server_hostname="elsewhere.test", open_timeout=T)

    run(main())


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_https_proxy(
    run: Any, tls_proxy: Proxies, no_proxy_env: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext, secure: bool
) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context if secure else None) as server:
            target = f"127.0.0.1:{port_of(server)}"
            proxy = f"https://localhost:{tls_proxy.ports[0]}"
            tls = {"ssl": client_context} if secure else {}
            ws = await echo_once(f"{'wss' if secure else 'ws'}://{target}/", proxy=proxy, proxy_ssl=client_context, **tls)
            assert tunnels_to(tls_proxy, target) == 1
            # Inside TLS to the proxy, the connection stays on the loop's transport (TLS in TLS for wss://).
            assert type(ws.conn.transport).__name__ not in ("TLSTransport", "SocketTransport")
            if secure:
                assert ws.conn.transport.get_extra_info("ssl_object").server_hostname == "127.0.0.1"
            with pytest.raises(ssl.SSLCertVerificationError):  # the proxy's certificate is checked too
                await fastws.connect(f"ws://{target}/", proxy=proxy, open_timeout=T)

    run(main())


def test_reconnecting_client_goes_through_the_proxy_each_time(run: Any, proxies: Proxies, no_proxy_env: Any) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            target = f"127.0.0.1:{port_of(server)}"
            attempts = 0
            async for ws in fastws.connect(f"ws://{target}/", proxy=url(proxies, SOCKS5), backoff_initial=0.01, backoff_max=0.05):
                attempts += 1
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), T) == "x"
                if attempts == 3:
                    break
                await ws.close()
            assert tunnels_to(proxies, target) == 3

    run(main())


# -- chosen by the environment ---------------------------------------------------------------


def test_environment_chooses_the_proxy_by_scheme(
    run: Any, proxies: Proxies, no_proxy_env: pytest.MonkeyPatch, refused_port: int, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    env = no_proxy_env

    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as plain, fastws.serve(echo_handler, "127.0.0.1", 0, ssl=server_context) as tls:
            ws_target, wss_target = f"127.0.0.1:{port_of(plain)}", f"127.0.0.1:{port_of(tls)}"
            env.setenv("HTTP_PROXY", url(proxies, HTTP))  # upper case
            env.setenv("https_proxy", url(proxies, SOCKS5))  # lower case
            await echo_once(f"ws://{ws_target}/")
            await echo_once(f"wss://{wss_target}/", ssl=client_context)
            assert tunnels_to(proxies, ws_target) == 1 and tunnels_to(proxies, wss_target) == 1
            # Lower case wins over upper case, as in curl.
            env.setenv("http_proxy", f"http://127.0.0.1:{refused_port}")
            with pytest.raises(fastws.ProxyError):
                await fastws.connect(f"ws://{ws_target}/", open_timeout=T)
            # ALL_PROXY when the scheme's own is unset.
            env.delenv("http_proxy")
            env.delenv("HTTP_PROXY")
            env.setenv("ALL_PROXY", url(proxies, SOCKS4))
            await echo_once(f"ws://{ws_target}/")
            assert tunnels_to(proxies, ws_target) == 2
            # proxy=None: direct, whatever the environment says.
            env.setenv("all_proxy", f"http://127.0.0.1:{refused_port}")
            await echo_once(f"ws://{ws_target}/", proxy=None)
            assert tunnels_to(proxies, ws_target) == 2

    run(main())


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*", "localhost,127.0.0.0/8", " .example.com , 127.0.0.1:{port}"])
def test_no_proxy_connects_directly(run: Any, no_proxy_env: pytest.MonkeyPatch, refused_port: int, no_proxy: str) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            no_proxy_env.setenv("all_proxy", f"http://127.0.0.1:{refused_port}")  # fails any connection through it
            no_proxy_env.setenv("NO_PROXY", no_proxy.format(port=port_of(server)))
            await echo_once(f"ws://127.0.0.1:{port_of(server)}/")

    run(main())


def test_no_proxy_for_another_port_still_uses_the_proxy(run: Any, no_proxy_env: pytest.MonkeyPatch, refused_port: int) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            no_proxy_env.setenv("all_proxy", f"http://127.0.0.1:{refused_port}")
            no_proxy_env.setenv("no_proxy", f"127.0.0.1:{port_of(server) + 1},example.com")
            with pytest.raises(fastws.ProxyError, match="cannot reach proxy"):
                await fastws.connect(f"ws://127.0.0.1:{port_of(server)}/", open_timeout=T)

    run(main())


# -- proxies that fail us ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_unreachable_proxy(run: Any, no_proxy_env: Any, refused_port: int, scheme: str) -> None:
    async def main() -> None:
        with pytest.raises(fastws.ProxyError, match="cannot reach proxy") as caught:
            await fastws.connect("ws://127.0.0.1:9/", proxy=f"{scheme}://127.0.0.1:{refused_port}", open_timeout=T)
        assert caught.value.status is None

    run(main())


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_silent_proxy_times_out_within_open_timeout(run: Any, no_proxy_env: Any, blackhole_port: int, scheme: str) -> None:
    async def main() -> None:
        open_timeout = 0.3
        started = time.monotonic()
        with pytest.raises(fastws.ProxyTimeout) as caught:
            await fastws.connect("ws://127.0.0.1:9/", proxy=f"{scheme}://127.0.0.1:{blackhole_port}", open_timeout=open_timeout)
        assert time.monotonic() - started < open_timeout + scaled(5)  # a hang detector, not a speed test
        assert isinstance(caught.value, fastws.OpenTimeout) and isinstance(caught.value, TimeoutError)
        assert "did not open a tunnel" in str(caught.value)

    run(main())


async def read_request(peer: RawClient) -> bytes:
    while b"\r\n\r\n" not in peer.buffer:
        if not await peer._read_more():
            raise EOFError("the client left before its request ended")
    request, _, peer.buffer = peer.buffer.partition(b"\r\n\r\n")
    return request + b"\r\n\r\n"


@pytest.fixture
def fake_proxy() -> Any:
    """An HTTP proxy that answers CONNECT with the given bytes, then waits; yields its port."""

    def start(answer: bytes) -> Any:
        requests: list[bytes] = []

        async def handle(peer: RawClient) -> None:
            requests.append(await read_request(peer))
            peer.send(answer)
            await peer.read_all_until_eof()

        server = raw_server(handle)
        server.requests = requests  # type: ignore[attr-defined]
        return server

    return start


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!", 403, "refused CONNECT to 127.0.0.1:9: HTTP 403 Forbidden"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", 502, "HTTP 502 Bad Gateway"),
        (b"HTTP/1.1 200 OK\r\n\r\nsurprise", None, "sent 8 bytes after its 200 answer"),
        (b"HTTP/1.1 200 OK\n\n", None, "bare LF"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", None, "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", None, "too long"),
        (b"HTTP/1.1 200", None, "closed the connection before opening the tunnel"),
    ],
)
def test_bad_http_proxy_answers(run: Any, no_proxy_env: Any, fake_proxy: Any, answer: bytes, status: int | None, words: str) -> None:
    if words.startswith("closed"):
        answer_then_close = answer

        async def handle(peer: RawClient) -> None:
            await read_request(peer)
            peer.send(answer_then_close)
            peer.close()

        server = raw_server(handle)
    else:
        server = fake_proxy(answer)

    async def main() -> None:
        async with server as port:
            with pytest.raises(fastws.ProxyError) as caught:
                await fastws.connect("ws://127.0.0.1:9/", proxy=f"http://127.0.0.1:{port}", open_timeout=T)
            assert words in str(caught.value)
            assert caught.value.status == status

    run(main())


def test_connect_request_and_refusal_stop_the_reconnecting_client(run: Any, no_proxy_env: Any, fake_proxy: Any) -> None:
    server = fake_proxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")

    async def main() -> None:
        async with server as port:
            with pytest.raises(fastws.ProxyError) as caught:
                async for _ in fastws.connect("ws://[::1]:8080/x", proxy=f"http://bob:p%40ss@127.0.0.1:{port}", open_timeout=T):
                    raise AssertionError("no connection can open")
            assert caught.value.status == 407
        assert len(server.requests) == 1  # a 407 is not retried
        request = server.requests[0]
        assert request.startswith(b"CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n")
        assert b"\r\nProxy-Authorization: Basic Ym9iOnBAc3M=\r\n" in request  # bob:p@ss

    run(main())


def test_socks_without_python_socks_says_what_to_install(run: Any, no_proxy_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "python_socks", None)  # as if not installed

    async def main() -> None:
        with pytest.raises(ImportError, match=r"pip install 'fastws\[proxy\]'"):
            await fastws.connect("ws://127.0.0.1:9/", proxy="socks5://127.0.0.1:1080", open_timeout=T)

    run(main())


# -- choosing and parsing, without I/O ---------------------------------------------------------


def test_parse_proxy() -> None:
    assert parse_proxy("socks5h://u:p%3A@[::1]") == ProxyURL("socks5h", "::1", 1080, "u", "p:")
    assert parse_proxy("proxy.corp:3128") == ProxyURL("http", "proxy.corp", 3128)
    assert parse_proxy("HTTPS://proxy.corp") == ProxyURL("https", "proxy.corp", 443)
    assert str(parse_proxy("http://u:secret@[::1]:8080")) == "http://[::1]:8080"
    for bad in ["ftp://proxy:21", "http://:8080", "http://proxy:99999", "http://proxy:80/path"]:
        with pytest.raises(fastws.InvalidURI):
            parse_proxy(bad)
    with pytest.raises(fastws.InvalidURI) as caught:
        parse_proxy("gopher://user:secret@proxy")
    assert "secret" not in str(caught.value)
    with pytest.raises(fastws.InvalidURI):
        HttpConnect(parse_proxy("http://proxy"), "example.com", 80, user_agent="x\r\nEvil: 1")
    # Credentials travel base64-encoded: whatever they hold cannot break the request's lines.
    assert b"\r\nX" not in HttpConnect(parse_proxy("http://a%0D%0AX:b@proxy"), "example.com", 80).request


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("example.com", 80, "example.com", True),
        ("www.example.com", 80, ".example.com", True),
        ("www.example.com", 80, "example.com", True),
        ("www.example.com", 80, "*.example.com", True),
        ("notexample.com", 80, "example.com", False),
        ("example.com.", 80, "EXAMPLE.com", True),
        ("example.com", 80, "example.com:8080", False),
        ("example.com", 8080, "example.com:8080", True),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("::1", 80, "::1", True),
        ("[::1]", 443, "[::1]:443", True),
        ("::1", 80, "[::1]:443", False),
        ("fd00::5", 80, "fd00::/8", True),
        ("anything", 1, "a.b, *", True),
        ("example.com", 80, "", False),
    ],
)
def test_bypasses_proxy(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_proxy_for(no_proxy_env: pytest.MonkeyPatch) -> None:
    assert proxy_for(False, "example.com", 80, True) is None
    no_proxy_env.setenv("HTTP_PROXY", "http://h:1")
    no_proxy_env.setenv("ALL_PROXY", "socks5h://s:2")
    assert proxy_for(False, "example.com", 80, True) == ProxyURL("http", "h", 1)
    assert proxy_for(True, "example.com", 443, True) == ProxyURL("socks5h", "s", 2)
    assert proxy_for(True, "example.com", 443, None) is None
    assert proxy_for(True, "example.com", 443, "socks4://x:3") == ProxyURL("socks4", "x", 3)
    no_proxy_env.setenv("HTTP_PROXY", "")  # empty is unset
    assert proxy_for(False, "example.com", 80, True) == ProxyURL("socks5h", "s", 2)
    with socket.socket() as sock, pytest.raises(ValueError, match="sock or proxy"):
        asyncio.run(fastws.create_connection(fastws.Listener, "ws://example.com/", sock=sock, proxy="http://h:1"))


# -- the command line --------------------------------------------------------------------------


def test_cli_connect_through_a_proxy(run: Any, proxies: Proxies, no_proxy_env: Any, loop_kind: str) -> None:
    async def main() -> None:
        async with fastws.serve(echo_handler, "127.0.0.1", 0) as server:
            target = f"127.0.0.1:{port_of(server)}"
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "fastws", "connect", f"ws://{target}/", "--proxy", url(proxies, SOCKS5), "--loop", loop_kind,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=child_env(), cwd=NEUTRAL_CWD,
            )  # fmt: skip
            try:
                assert client.stdin is not None and client.stdout is not None
                assert (await asyncio.wait_for(client.stdout.readline(), T)).startswith(b"connected to")
                client.stdin.write(b"via socks\n")
                assert await asyncio.wait_for(client.stdout.readline(), T) == b"< via socks\n"
                client.stdin.close()  # Ctrl-D: close with 1000
                _, err = await asyncio.wait_for(client.communicate(), T)
            finally:
                if client.returncode is None:
                    client.kill()
                    await client.wait()
            assert client.returncode == 0, err
            assert tunnels_to(proxies, target) == 1

    run(main())


def test_cli_connect_proxy_errors(capsys: pytest.CaptureFixture[str], no_proxy_env: Any, refused_port: int) -> None:
    assert cli_main(["connect", "ws://127.0.0.1:9/", "--proxy", f"http://127.0.0.1:{refused_port}"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach proxy http://127.0.0.1:" in lines[0], lines
    assert cli_main(["connect", "ws://127.0.0.1:9/", "--proxy", "ftp://127.0.0.1:21"]) == 2
    assert "the scheme must be one of" in capsys.readouterr().err
    # 'none' ignores the environment's proxy (which would refuse): the refusal is then the server's.
    no_proxy_env.setenv("ALL_PROXY", f"http://127.0.0.1:{refused_port}")
    assert cli_main(["connect", f"ws://127.0.0.1:{refused_port}/", "--proxy", "none"]) == 1
    assert "proxy" not in capsys.readouterr().err
