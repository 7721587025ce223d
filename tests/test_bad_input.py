"""The bad-input table: each misbehaving peer gets the right answer (HTTP status or close
code, then the TCP connection closed), the server keeps serving others, and the bad peer
is logged at INFO or below with its address, never with a traceback."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from _wsutil import (
    HttpHead,
    RawClient,
    assert_echo,
    build_frame,
    close_payload,
    echo_server,
    port_of,
    scaled,
    upgrade_request,
    uri_of,
)

Scenario = Callable[[int], Awaitable[int]]  # gets the server port, returns the bad client's port


def play(run: Any, caplog: pytest.LogCaptureFixture, scenario: Scenario, **server_options: Any) -> None:
    async def main() -> int:
        async with echo_server(**server_options) as server:
            peer_port = await scenario(port_of(server))
            await assert_echo(uri_of(server))  # the server still serves good clients
            await assert_echo(uri_of(server), b"\x00binary too")
        return peer_port

    with caplog.at_level(logging.DEBUG, logger="fastws"):
        peer_port = run(main())
    records = [r for r in caplog.records if r.name.startswith("fastws")]
    loud = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records if r.levelno >= logging.WARNING]
    assert loud == [], "a bad peer must not be logged at WARNING or above"
    assert [r.getMessage() for r in records if r.exc_info] == [], "a bad peer must not be logged with a traceback"
    mentions = [r for r in records if f"127.0.0.1:{peer_port}" in r.getMessage()]
    assert mentions, f"no log record names the bad peer 127.0.0.1:{peer_port}: {[r.getMessage() for r in records]}"
    assert all(r.levelno <= logging.INFO for r in mentions)


# -- the opening handshake ---------------------------------------------------------------------


def refused_with(request: bytes, statuses: tuple[int, ...], header: tuple[str, str] | None = None) -> Scenario:
    async def scenario(port: int) -> int:
        client = await RawClient.open(port)
        client.send(request)
        head = await client.read_http_response()
        assert head.status in statuses, head
        if header is not None:
            assert head.headers.get(header[0].lower()) == header[1]
        assert await client.read_all_until_eof() == b"", "the server must close after refusing"
        client.close()
        return client.local_port

    return scenario


def test_non_get_method_is_400(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, refused_with(upgrade_request(method="POST"), (400,)))


def test_http_10_is_400(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, refused_with(upgrade_request(version="HTTP/1.0"), (400,)))


def test_missing_key_is_400(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, refused_with(upgrade_request(key=None), (400,)))


def test_malformed_key_is_400(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, refused_with(upgrade_request(key="c2hvcnQ="), (400,)))


def test_wrong_version_is_426_with_version_header(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, refused_with(upgrade_request(ws_version="8"), (426,), ("Sec-WebSocket-Version", "13")))


def test_missing_upgrade_header_is_426(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    request = upgrade_request().replace(b"Upgrade: websocket\r\n", b"")
    play(run, caplog, refused_with(request, (426,), ("Sec-WebSocket-Version", "13")))


def test_too_many_headers_is_431_or_400(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    request = upgrade_request(extra=[(f"X-H{i}", "v") for i in range(300)])
    play(run, caplog, refused_with(request, (431, 400)))


def test_too_long_header_is_431_or_400(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    request = upgrade_request(extra=[("X-Long", "a" * 20000)])
    play(run, caplog, refused_with(request, (431, 400)))


def test_malformed_header_line_is_400(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    request = upgrade_request().replace(b"\r\n\r\n", b"\r\nthis is not a header\r\n\r\n")
    play(run, caplog, refused_with(request, (400,)))


PROMPT = scaled(5.0)  # a bound on the wait, far below the open_timeout these servers run with


def refused_promptly(request: bytes, status: int, named: str) -> Scenario:
    """The answer comes at once (not after open_timeout), names the problem in a plain-text body, then EOF."""

    async def scenario(port: int) -> int:
        client = await RawClient.open(port)
        client.send(request)
        head: HttpHead = await asyncio.wait_for(client.read_http_response(), PROMPT)
        assert head.status == status, head
        assert head.headers["content-type"].startswith("text/plain"), head
        assert named.encode() in head.body, head.body
        assert await asyncio.wait_for(client.read_all_until_eof(), PROMPT) == b"", "the server must close after refusing"
        client.close()
        return client.local_port

    return scenario


def _bare_lf(request: bytes) -> bytes:
    return request.replace(b"\r\n", b"\n")


@pytest.mark.parametrize(
    "request_bytes, named",
    [
        (upgrade_request("/chat\x00evil"), "0x00 (NUL) in the request target"),
        (upgrade_request("/chat\x1b[2J"), "0x1B in the request target"),
        (upgrade_request("/a\tb"), "0x09 in the request target"),
        (upgrade_request(extra=[("X-Trace", "a\x01b")]), "0x01 in the value of header 'X-Trace'"),
        (upgrade_request(extra=[("X-Trace", "a\x00b")]), "0x00 (NUL) in the value of header 'X-Trace'"),
        (upgrade_request(host="127.0.0.1\x7f"), "0x7F (DEL) in the value of header 'Host'"),
        (upgrade_request(extra=[("X-Tr\x02ce", "v")]), "0x02 in a header name"),
        (upgrade_request(extra=[("X-Trace", "a\rb")]), "CR not followed by LF"),
        (_bare_lf(upgrade_request()), "bare LF"),
        (_bare_lf(upgrade_request()[:-4]) + b"\r\n\r\n", "bare LF"),  # bare-LF lines, then a CRLF CRLF end
        (b"GET / HTTP/1.1\nHost: 127.0.0.1\n", "bare LF"),  # not even the end of the head
    ],
    ids=[
        "nul-in-target",
        "esc-in-target",
        "tab-in-target",
        "ctl-in-value",
        "nul-in-value",
        "del-in-host",
        "ctl-in-name",
        "lone-cr",
        "bare-lf",
        "bare-lf-then-crlfcrlf",
        "bare-lf-unfinished",
    ],
)
def test_hostile_head_is_400_at_once_naming_the_problem(
    run: Any, caplog: pytest.LogCaptureFixture, request_bytes: bytes, named: str
) -> None:
    play(run, caplog, refused_promptly(request_bytes, 400, named), open_timeout=6 * PROMPT)


def test_endless_head_is_431_as_soon_as_it_passes_max_head(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    from fastws.handshake import MAX_HEAD

    # Short valid lines and no blank line; exactly one byte over the limit, so that the
    # server has read all of it when it answers (unread bytes at close would mean a RST).
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    head += line * ((MAX_HEAD - len(head)) // len(line))
    head += b"X-Last: " + b"a" * (MAX_HEAD + 1 - len(head) - 8)
    assert len(head) == MAX_HEAD + 1
    play(run, caplog, refused_promptly(head, 431, "head too large"), open_timeout=6 * PROMPT)


@pytest.mark.parametrize(
    "garbage",
    [
        random.Random(6455).randbytes(300),
        random.Random(1).randbytes(2000) + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100),  # a TLS ClientHello on a plain port
        b"\r\n\r\n",
    ],
    ids=["random", "random-with-blank-line", "tls-hello", "blank-line"],
)
def test_garbage_gets_4xx_or_is_closed(run: Any, caplog: pytest.LogCaptureFixture, garbage: bytes) -> None:
    async def scenario(port: int) -> int:
        client = await RawClient.open(port)
        client.send(garbage)
        answer = await client.read_all_until_eof()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:100]
        client.close()
        return client.local_port

    play(run, caplog, scenario, open_timeout=0.5)


def test_half_request_then_stall_is_closed_after_open_timeout(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(port: int) -> int:
        import asyncio

        loop = asyncio.get_running_loop()
        start = loop.time()  # before the server's open_timeout can start: a safe lower bound
        client = await RawClient.open(port)
        client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        assert await client.read_all_until_eof() == b""
        elapsed = loop.time() - start
        assert 0.5 - 0.05 < elapsed < 0.5 + scaled(7.5), elapsed
        client.close()
        return client.local_port

    play(run, caplog, scenario, open_timeout=0.5)


# -- frames on an open connection --------------------------------------------------------------------


def failed_with(code: int, *frames: bytes) -> Scenario:
    async def scenario(port: int) -> int:
        client = await RawClient.connect(port)
        client.send(b"".join(frames))
        close = await client.expect_close()  # a close frame, then the TCP connection ends
        assert close.close_code == code, (close.close_code, close.payload)
        client.close()
        return client.local_port

    return scenario


def test_unmasked_client_frame_is_1002(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1002, build_frame(1, b"hello", mask=False)))


@pytest.mark.parametrize("rsv", [4, 2, 1])
def test_rsv_bits_without_extension_are_1002(run: Any, caplog: pytest.LogCaptureFixture, rsv: int) -> None:
    play(run, caplog, failed_with(1002, build_frame(1, b"hello", rsv=rsv)))


@pytest.mark.parametrize("opcode", [3, 7, 11, 15])
def test_reserved_opcode_is_1002(run: Any, caplog: pytest.LogCaptureFixture, opcode: int) -> None:
    play(run, caplog, failed_with(1002, build_frame(opcode, b"x")))


def test_fragmented_control_frame_is_1002(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1002, build_frame(9, b"ping", fin=False)))


def test_control_frame_over_125_bytes_is_1002(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1002, build_frame(9, b"p" * 126)))


def test_continuation_with_nothing_to_continue_is_1002(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1002, build_frame(0, b"orphan")))


def test_new_data_frame_inside_fragmented_message_is_1002(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1002, build_frame(1, b"start", fin=False), build_frame(2, b"intruder")))


def test_one_byte_close_payload_is_1002(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1002, build_frame(8, b"\x03")))


@pytest.mark.parametrize("code", [999, 1005, 1006, 1016, 2999, 5000])
def test_invalid_close_code_is_1002(run: Any, caplog: pytest.LogCaptureFixture, code: int) -> None:
    play(run, caplog, failed_with(1002, build_frame(8, close_payload(code))))


def test_invalid_utf8_text_is_1007(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1007, build_frame(1, b"caf\xc3(")))


def test_invalid_utf8_in_fragmented_text_is_1007(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1007, build_frame(1, b"ok", fin=False), build_frame(0, b"\xff", fin=False)))


def test_invalid_utf8_close_reason_is_1007(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1007, build_frame(8, close_payload(1000, b"\xfe\xff"))))


def test_message_over_max_size_is_1009(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Only the header (with its 16-bit length and mask key) is sent: the server decides from it.
    header = build_frame(2, b"\0" * 1001)[:8]
    play(run, caplog, failed_with(1009, header), max_size=1000)


def test_fragments_over_max_size_are_1009(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    play(run, caplog, failed_with(1009, build_frame(2, b"a" * 600, fin=False), build_frame(0, b"b" * 600)[:8]), max_size=1000)


def test_peer_vanishing_mid_frame_is_not_an_error(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(port: int) -> int:
        client = await RawClient.connect(port)
        client.send(build_frame(1, b"x" * 100)[:20])
        await client.writer.drain()
        client.writer.transport.abort()
        return client.local_port

    async def main() -> None:
        async with echo_server() as server:
            await scenario(port_of(server))
            await assert_echo(uri_of(server))

    with caplog.at_level(logging.DEBUG, logger="fastws"):
        run(main())
    assert [r.getMessage() for r in caplog.records if r.name.startswith("fastws") and (r.levelno >= logging.WARNING or r.exc_info)] == []
