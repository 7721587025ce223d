"""The opening handshake, sans-I/O: accept key, request checks, subprotocols, origins,
HTTP head limits and the client's checks of the server's answer."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

from _wsutil import RFC_KEY, expected_accept, parse_http_head, upgrade_request
from fastws import Headers, InvalidOrigin, InvalidRequest, InvalidResponse, Request
from fastws.handshake import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    ClientHandshake,
    HeadReader,
    ServerHandshake,
    accept_key,
    http_response,
)
from fastws.protocol import Connected, HandshakeFailed, ServerProtocol


def request(*extra: tuple[str, str], base: bool = True, method: str = "GET") -> Request:
    fields = [("Host", "example.com")]
    if base:
        fields += [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", RFC_KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    return Request(method, "/chat", Headers(fields + list(extra)))


def without(name: str, *extra: tuple[str, str]) -> Request:
    req = request(*extra)
    req.headers = Headers([(k, v) for k, v in req.headers if k.lower() != name.lower()] + list(extra))
    return req


def answer_headers(answer: bytes) -> dict[str, str]:
    head, rest = parse_http_head(answer)
    assert rest == b""
    assert head.status == 101
    return head.headers


# -- accept key ---------------------------------------------------------------------------


def test_accept_key_matches_rfc6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_accept_key_matches_reference_for_random_keys() -> None:
    for i in range(20):
        key = base64.b64encode(bytes([i]) * 16).decode()
        assert accept_key(key) == expected_accept(key)


def test_server_answer_is_101_with_accept_upgrade_and_connection() -> None:
    answer, subprotocol, _ = ServerHandshake().accept(request())
    headers = answer_headers(answer)
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert subprotocol is None
    assert "sec-websocket-protocol" not in headers


# -- Upgrade / Connection token lists --------------------------------------------------


@pytest.mark.parametrize(
    "upgrade, connection",
    [
        ("websocket", "Upgrade"),
        ("WebSocket", "upgrade"),
        ("WEBSOCKET", "UPGRADE"),
        ("websocket", "keep-alive, Upgrade"),
        ("h2c, websocket", "Upgrade, keep-alive"),
        ("websocket", "keep-alive,Upgrade"),
    ],
)
def test_upgrade_and_connection_are_case_insensitive_token_lists(upgrade: str, connection: str) -> None:
    req = Request("GET", "/", Headers([
        ("Host", "h"), ("Upgrade", upgrade), ("Connection", connection),
        ("Sec-WebSocket-Key", RFC_KEY), ("Sec-WebSocket-Version", "13"),
    ]))
    answer, _, _ = ServerHandshake().accept(req)
    assert answer.startswith(b"HTTP/1.1 101 ")


def test_connection_token_may_come_in_a_second_header_field() -> None:
    req = without("Connection", ("Connection", "keep-alive"), ("connection", "upgrade"))
    answer, _, _ = ServerHandshake().accept(req)
    assert answer.startswith(b"HTTP/1.1 101 ")


def test_missing_upgrade_header_is_426_with_version_header() -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(without("Upgrade"))
    assert info.value.status == 426
    assert ("Sec-WebSocket-Version", "13") in info.value.headers


def test_upgrade_to_another_protocol_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(without("Upgrade", ("Upgrade", "h2c")))
    assert info.value.status == 426


def test_connection_without_upgrade_token_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(without("Connection", ("Connection", "keep-alive")))
    assert info.value.status == 400


def test_missing_host_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(without("Host"))
    assert info.value.status == 400


@pytest.mark.parametrize("versions", [[], ["8"], ["12"], ["14"], ["13", "8"]])
def test_wrong_websocket_version_is_426_naming_13(versions: list[str]) -> None:
    req = without("Sec-WebSocket-Version", *[("Sec-WebSocket-Version", v) for v in versions])
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(req)
    assert info.value.status == 426
    assert ("Sec-WebSocket-Version", "13") in info.value.headers


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not base64!",
        base64.b64encode(b"x" * 15).decode(),  # 15 bytes
        base64.b64encode(b"x" * 17).decode(),  # 17 bytes
        RFC_KEY[:-2],  # bad padding
        "dGhlIHNhbXBsZSBub25jZQ==é",
    ],
)
def test_malformed_key_is_400(key: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(without("Sec-WebSocket-Key", ("Sec-WebSocket-Key", key)))
    assert info.value.status == 400


def test_missing_key_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(without("Sec-WebSocket-Key"))
    assert info.value.status == 400


def test_two_keys_are_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().accept(request(("Sec-WebSocket-Key", RFC_KEY)))
    assert info.value.status == 400


@pytest.mark.parametrize(
    "line",
    ["POST / HTTP/1.1", "PUT /x HTTP/1.1", "GET / HTTP/1.0", "GET / HTTP/2", "GET /", "GET  HTTP/1.1", "get / HTTP/1.1"],
)
def test_upgrade_request_line_that_is_not_http11_get_is_400(line: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().parse(line, Headers([("Upgrade", "websocket")]))
    assert info.value.status == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "get"])
def test_plain_request_with_another_method_is_405(method: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().parse(f"{method} / HTTP/1.1", Headers())
    assert info.value.status == 405
    assert ("Allow", "GET") in info.value.headers


def test_request_line_keeps_path_and_query() -> None:
    req = ServerHandshake().parse("GET /a/b?x=1&y=2 HTTP/1.1", Headers([("Host", "h")]))
    assert (req.method, req.path, req.version) == ("GET", "/a/b?x=1&y=2", "HTTP/1.1")
    assert req.headers["host"] == "h"


# -- subprotocols --------------------------------------------------------------------------


def test_subprotocol_server_preference_wins() -> None:
    hs = ServerHandshake(subprotocols=["chat", "superchat"])
    answer, subprotocol, _ = hs.accept(request(("Sec-WebSocket-Protocol", "superchat, chat")))
    assert subprotocol == "chat"
    assert answer_headers(answer)["sec-websocket-protocol"] == "chat"


def test_subprotocol_offers_across_several_header_fields() -> None:
    hs = ServerHandshake(subprotocols=["v2", "v1"])
    req = request(("Sec-WebSocket-Protocol", "v0"), ("Sec-WebSocket-Protocol", "v1"))
    _, subprotocol, _ = hs.accept(req)
    assert subprotocol == "v1"


def test_no_subprotocol_offered_gives_none_and_no_header() -> None:
    answer, subprotocol, _ = ServerHandshake(subprotocols=["chat"]).accept(request())
    assert subprotocol is None
    assert "sec-websocket-protocol" not in answer_headers(answer)


def test_no_common_subprotocol_gives_none() -> None:
    answer, subprotocol, _ = ServerHandshake(subprotocols=["chat"]).accept(request(("Sec-WebSocket-Protocol", "mqtt")))
    assert subprotocol is None
    assert "sec-websocket-protocol" not in answer_headers(answer)


def test_subprotocol_names_are_case_sensitive() -> None:
    _, subprotocol, _ = ServerHandshake(subprotocols=["chat"]).accept(request(("Sec-WebSocket-Protocol", "Chat")))
    assert subprotocol is None


def test_select_subprotocol_sees_request_and_offers_in_order() -> None:
    seen: list[tuple[str, list[str]]] = []

    def select(req: Request, offered: list[str]) -> str | None:
        seen.append((req.path, offered))
        return offered[-1]

    hs = ServerHandshake(subprotocols=["a"], select_subprotocol=select)
    answer, subprotocol, _ = hs.accept(request(("Sec-WebSocket-Protocol", "a, b,c")))
    assert seen == [("/chat", ["a", "b", "c"])]
    assert subprotocol == "c"
    assert answer_headers(answer)["sec-websocket-protocol"] == "c"


def test_select_subprotocol_returning_none_sends_no_header() -> None:
    hs = ServerHandshake(select_subprotocol=lambda req, offered: None)
    answer, subprotocol, _ = hs.accept(request(("Sec-WebSocket-Protocol", "a")))
    assert subprotocol is None
    assert "sec-websocket-protocol" not in answer_headers(answer)


def test_select_subprotocol_choosing_an_unoffered_name_is_refused() -> None:
    hs = ServerHandshake(select_subprotocol=lambda req, offered: "zzz")
    with pytest.raises(InvalidRequest) as info:
        hs.accept(request(("Sec-WebSocket-Protocol", "a")))
    assert info.value.status == 500


# -- origins -----------------------------------------------------------------------------


def test_origin_list_allows_listed_origin() -> None:
    hs = ServerHandshake(origins=["https://a.example", None])
    answer, _, _ = hs.accept(request(("Origin", "https://a.example")))
    assert answer.startswith(b"HTTP/1.1 101 ")


def test_origin_list_with_none_allows_requests_without_origin() -> None:
    hs = ServerHandshake(origins=["https://a.example", None])
    answer, _, _ = hs.accept(request())
    assert answer.startswith(b"HTTP/1.1 101 ")


def test_origin_list_without_none_refuses_requests_without_origin() -> None:
    hs = ServerHandshake(origins=["https://a.example"])
    with pytest.raises(InvalidOrigin) as info:
        hs.accept(request())
    assert info.value.status == 403
    assert info.value.origin is None


def test_unlisted_origin_is_403() -> None:
    hs = ServerHandshake(origins=["https://a.example", None])
    with pytest.raises(InvalidOrigin) as info:
        hs.accept(request(("Origin", "https://evil.example")))
    assert info.value.status == 403
    assert info.value.origin == "https://evil.example"
    assert isinstance(info.value, InvalidRequest)


def test_origin_callable_decides() -> None:
    seen: list[str | None] = []

    def allowed(origin: str | None) -> bool:
        seen.append(origin)
        return origin is not None and origin.endswith(".example")

    hs = ServerHandshake(origins=allowed)
    assert hs.accept(request(("Origin", "https://b.example")))[0].startswith(b"HTTP/1.1 101 ")
    with pytest.raises(InvalidOrigin):
        hs.accept(request(("Origin", "https://b.test")))
    with pytest.raises(InvalidOrigin):
        hs.accept(request())
    assert seen == ["https://b.example", "https://b.test", None]


def test_no_origin_check_by_default() -> None:
    answer, _, _ = ServerHandshake().accept(request(("Origin", "https://anything")))
    assert answer.startswith(b"HTTP/1.1 101 ")


def test_refused_origin_through_sans_io_server_answers_403_and_closes() -> None:
    proto = ServerProtocol(origins=["https://good.example"])
    proto.receive_data(upgrade_request(extra=[("Origin", "https://evil.example")]))
    out = b"".join(proto.data_to_send())
    head, _ = parse_http_head(out)
    assert head.status == 403
    events = proto.events_received()
    assert len(events) == 1 and isinstance(events[0], HandshakeFailed)
    assert isinstance(events[0].error, InvalidOrigin)
    assert proto.close_expected()


# -- extra headers and the raw answer ------------------------------------------------------


def test_extra_headers_and_server_header_are_in_the_answer() -> None:
    hs = ServerHandshake(extra_headers=[("X-One", "1"), ("X-Two", "two")], server_header="test/1")
    headers = answer_headers(hs.accept(request())[0])
    assert headers["x-one"] == "1"
    assert headers["x-two"] == "two"
    assert headers["server"] == "test/1"


def test_sans_io_server_extra_headers_and_connected_event() -> None:
    proto = ServerProtocol(extra_headers=[("X-Hello", "world")], subprotocols=["p"])
    proto.receive_data(upgrade_request("/room?id=3", extra=[("Sec-WebSocket-Protocol", "q, p")]))
    head, _ = parse_http_head(b"".join(proto.data_to_send()))
    assert head.status == 101
    assert head.headers["x-hello"] == "world"
    (event,) = proto.events_received()
    assert isinstance(event, Connected)
    assert event.subprotocol == "p"
    assert event.request.path == "/room?id=3"
    assert not proto.close_expected()


def test_http_response_has_content_length_and_connection_close() -> None:
    data = http_response(404, "nope", [("X-A", "b")])
    head, body = parse_http_head(data)
    assert head.status == 404
    assert head.headers["content-length"] == "4"
    assert head.headers["connection"] == "close"
    assert head.headers["x-a"] == "b"
    assert body == b"nope"


# -- Headers -----------------------------------------------------------------------------------


def test_headers_lookup_is_case_insensitive_and_joins_repeats() -> None:
    h = Headers([("X-A", "1"), ("x-a", "2"), ("Y", "3")])
    assert h["x-A"] == "1, 2"
    assert h.get_all("X-A") == ["1", "2"]
    assert "y" in h and "z" not in h
    assert h.get("z") is None and h.get("z", "d") == "d"
    with pytest.raises(KeyError):
        h["z"]
    assert len(h) == 3
    assert list(h)[0] == ("X-A", "1")


def test_headers_tokens_lower_cases_and_splits() -> None:
    h = Headers([("Connection", "keep-alive, Upgrade"), ("connection", " ,Foo ")])
    assert h.tokens("CONNECTION") == ["keep-alive", "upgrade", "foo"]


# -- HeadReader ------------------------------------------------------------------------------


def reader() -> HeadReader:
    return HeadReader(InvalidRequest)


def test_head_reader_returns_none_until_blank_line_then_rest() -> None:
    r = reader()
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Y:  spaced \t\r\n\r\nEXTRA"
    for i in range(len(data) - 6):
        assert r.feed(data[i : i + 1]) is None
    result = r.feed(data[len(data) - 6 :])
    assert result is not None
    start, headers, rest = result
    assert start == "GET / HTTP/1.1"
    assert headers["host"] == "x"
    assert headers["x-y"] == "spaced"
    assert rest == b"EXTRA"


def test_head_reader_accepts_max_headers() -> None:
    lines = [f"X-{i}: v" for i in range(MAX_HEADERS)]
    data = ("GET / HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    result = reader().feed(data)
    assert result is not None and len(result[1]) == MAX_HEADERS


def test_head_reader_too_many_headers_is_431() -> None:
    lines = [f"X-{i}: v" for i in range(MAX_HEADERS + 1)]
    data = ("GET / HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    with pytest.raises(InvalidRequest) as info:
        reader().feed(data)
    assert info.value.status == 431


def test_head_reader_too_many_headers_detected_before_the_end() -> None:
    lines = [f"X-{i}: v" for i in range(MAX_HEADERS + 5)]
    data = ("GET / HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n").encode()  # no blank line yet
    with pytest.raises(InvalidRequest) as info:
        reader().feed(data)
    assert info.value.status == 431


def test_head_reader_too_long_header_line_is_431() -> None:
    data = b"GET / HTTP/1.1\r\nX-Long: " + b"a" * MAX_LINE + b"\r\n\r\n"
    with pytest.raises(InvalidRequest) as info:
        reader().feed(data)
    assert info.value.status == 431


def test_head_reader_too_long_header_detected_while_it_streams_in() -> None:
    r = reader()
    assert r.feed(b"GET / HTTP/1.1\r\nX-Long: ") is None
    with pytest.raises(InvalidRequest) as info:
        for _ in range(MAX_LINE // 1024 + 2):
            r.feed(b"a" * 1024)
    assert info.value.status == 431


def test_head_reader_too_long_start_line_is_414() -> None:
    with pytest.raises(InvalidRequest) as info:
        reader().feed(b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1")
    assert info.value.status == 414


def test_head_reader_line_of_exactly_max_line_is_accepted() -> None:
    value = b"a" * (MAX_LINE - len(b"X-A: "))
    result = reader().feed(b"GET / HTTP/1.1\r\nX-A: " + value + b"\r\n\r\n")
    assert result is not None and result[1]["x-a"] == value.decode()


@pytest.mark.parametrize(
    "line",
    [b"no colon here", b": empty name", b"Bad Name: x", b"X-\x00: y", b"X-A: a\x00b", b"X-\xff: v"],
)
def test_head_reader_malformed_header_line_is_400(line: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        reader().feed(b"GET / HTTP/1.1\r\n" + line + b"\r\n\r\n")
    assert info.value.status == 400


def test_head_reader_non_ascii_start_line_is_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        reader().feed(b"GET /\xe9 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert info.value.status == 400


# Heads a server must refuse with 400 the moment the bad byte arrives, and what the
# message must name. (The third element: the index of the offending byte.)
HOSTILE_HEADS = [
    (b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", "0x00 (NUL) in the request target"),
    (b"GET /a\x1bb HTTP/1.1\r\nHost: x\r\n\r\n", "0x1B in the request target"),
    (b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", "0x7F (DEL) in the request target"),
    (b"G\x00ET / HTTP/1.1\r\nHost: x\r\n\r\n", "in the method"),
    (b"GET / HTTP/1.1\x00\r\nHost: x\r\n\r\n", "in the HTTP version"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", "0x01 in the value of header 'X-A'"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00\r\n\r\n", "0x00 (NUL) in the value of header 'X-A'"),
    (b"GET / HTTP/1.1\r\nHost: x\x7f\r\n\r\n", "0x7F (DEL) in the value of header 'Host'"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-\x1f: y\r\n\r\n", "0x1F in a header name"),
    (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", "CR not followed by LF"),
    (b"GET / HTTP/1.1\nHost: x\nUpgrade: websocket\n\n", "bare LF"),
    (b"GET / HTTP/1.1\nHost: x\nUpgrade: websocket\r\n\r\n", "bare LF"),  # a CRLF CRLF end does not save it
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\n\r\n", "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\n", "bare LF"),
]


def _first_bad_byte(head: bytes) -> int:
    for i, byte in enumerate(head):
        if byte == 0x0A and head[i - 1 : i] != b"\r":
            return i
        if byte == 0x0D and head[i + 1 : i + 2] != b"\n":
            return i
        if (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) or byte == 0x7F:
            return i
    raise AssertionError("no bad byte")


@pytest.mark.parametrize("head, named", HOSTILE_HEADS)
def test_head_reader_refuses_control_characters_and_bare_lf_with_400(head: bytes, named: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        reader().feed(head)
    assert info.value.status == 400
    assert named in str(info.value)


@pytest.mark.parametrize("head, named", HOSTILE_HEADS)
def test_head_reader_refuses_at_the_bad_byte_not_at_the_end_of_the_head(head: bytes, named: str) -> None:
    r = reader()
    bad = _first_bad_byte(head)
    for i in range(len(head)):
        try:
            assert r.feed(head[i : i + 1]) is None
        except InvalidRequest as exc:
            assert named in str(exc)
            # At the bad byte, or at the next one when only it tells a lone CR from a line end.
            assert i in (bad, bad + 1), (i, bad)
            return
    raise AssertionError("never refused")


_PIECES = [b"a", b"X-A", b": ", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\x00", b"\x01", b"\x1f", b"\x7f", b"\xe9"]
_BAD_BYTE_WORDS = ("control character", "bare LF", "CR not followed by LF")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.lists(st.integers(1, 7), min_size=1, max_size=60))
def test_head_reader_refuses_exactly_the_heads_with_a_forbidden_byte_however_split(pieces: list[bytes], sizes: list[int]) -> None:
    data = b"GET / HTTP/1.1\r\n" + b"".join(pieces)
    end = data.find(b"\r\n\r\n")
    head = data[: end + 4] if end >= 0 else data
    try:
        bad: int | None = _first_bad_byte(head)
    except AssertionError:
        bad = None
    if bad is not None and end < 0 and bad == len(head) - 1 and head.endswith(b"\r"):
        bad = None  # a last CR: the next byte, not yet sent, decides
    r, pos, refused = reader(), 0, None
    while pos < len(data) and refused is None:
        chunk = data[pos : pos + sizes[pos % len(sizes)]]
        pos += len(chunk)
        try:
            if r.feed(chunk) is not None:
                break
        except InvalidRequest as exc:
            refused = exc
    if bad is None:
        assert refused is None or not any(w in str(refused) for w in _BAD_BYTE_WORDS), (data, refused)
    else:
        assert refused is not None and refused.status == 400, (data, bad)
        assert any(w in str(refused) for w in _BAD_BYTE_WORDS), (data, refused)


@pytest.mark.parametrize(
    "line, named",
    [
        ("GET /a\tb HTTP/1.1", "0x09 in the request target"),
        ("G@T / HTTP/1.1", "malformed method"),
        (" / HTTP/1.1", "malformed method"),
    ],
)
def test_request_line_with_tab_in_target_or_non_token_method_is_400(line: str, named: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ServerHandshake().parse(line, request().headers)
    assert info.value.status == 400
    assert named in str(info.value)


def test_head_reader_allows_htab_and_obs_text_in_header_values() -> None:
    result = reader().feed(b"GET / HTTP/1.1\r\nX-A: a\tb\r\nX-B: caf\xe9\r\n\r\n")
    assert result is not None
    assert result[1]["x-a"] == "a\tb"
    assert result[1]["x-b"] == "caf\u00e9"


def test_head_reader_does_not_check_the_bytes_after_the_head() -> None:
    frames = b"\x81\x03\n\x00\r" + b"\x82\x01\x7f"  # what may follow: frames, any bytes at all
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + frames
    for split in range(1, len(data)):
        r = reader()
        result = r.feed(data[:split])
        if result is None:
            result = r.feed(data[split:])
            assert result is not None
            assert result[2] == frames, split
        else:
            assert result[2] + data[split:] == frames, split


def test_head_reader_head_over_max_head_is_431_before_it_ends() -> None:
    r = reader()
    assert r.feed(b"GET / HTTP/1.1\r\n") is None
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"  # under MAX_LINE, and few enough for MAX_HEADERS
    with pytest.raises(InvalidRequest) as info:
        for _ in range(MAX_HEAD // len(line) + 2):
            r.feed(line)
    assert info.value.status == 431


def test_head_reader_complete_head_over_max_head_is_431() -> None:
    line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    head = b"GET / HTTP/1.1\r\n" + line * (MAX_HEAD // len(line) + 1) + b"\r\n"
    with pytest.raises(InvalidRequest) as info:
        reader().feed(head)
    assert info.value.status == 431


def test_head_reader_uses_the_given_error_type() -> None:
    r = HeadReader(lambda message, status: InvalidResponse(message))
    with pytest.raises(InvalidResponse):
        r.feed(b"HTTP/1.1 101 OK\r\nbad line\r\n\r\n")


# -- client side: checking the server's answer ---------------------------------------------


def server_answer(client: ClientHandshake, *extra: str, status: str = "101 Switching Protocols", accept: str | None = None) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept if accept is not None else expected_accept(client.key)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_client_request_has_the_required_fields() -> None:
    client = ClientHandshake("example.com", 8080, "/p?q=1", subprotocols=["a", "b"], origin="https://o", extra_headers=[("X-T", "1")])
    head = client.request.decode()
    start, *lines = head.split("\r\n\r\n")[0].split("\r\n")
    assert start == "GET /p?q=1 HTTP/1.1"
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert fields["host"] == "example.com:8080"
    assert fields["upgrade"] == "websocket"
    assert fields["connection"] == "Upgrade"
    assert fields["sec-websocket-version"] == "13"
    assert len(base64.b64decode(fields["sec-websocket-key"], validate=True)) == 16
    assert fields["sec-websocket-protocol"] == "a, b"
    assert fields["origin"] == "https://o"
    assert fields["x-t"] == "1"
    assert client.request.endswith(b"\r\n\r\n")


def test_client_keys_are_random() -> None:
    keys = {ClientHandshake("h", 80, "/").key for _ in range(10)}
    assert len(keys) == 10


def test_client_host_header_omits_default_port_and_brackets_ipv6() -> None:
    assert b"\r\nHost: h\r\n" in ClientHandshake("h", 80, "/").request
    assert b"\r\nHost: h\r\n" in ClientHandshake("h", 443, "/", secure=True).request
    assert b"\r\nHost: h:443\r\n" in ClientHandshake("h", 443, "/").request
    assert b"\r\nHost: [::1]:9000\r\n" in ClientHandshake("::1", 9000, "/").request


def test_client_accepts_correct_answer_split_anywhere_and_returns_rest() -> None:
    client = ClientHandshake("h", 80, "/", subprotocols=["chat"])
    data = server_answer(client, "Sec-WebSocket-Protocol: chat") + b"\x81\x02hi"
    for i in range(len(data) - 5):
        assert client.receive_data(data[i : i + 1]) is None
    result = client.receive_data(data[len(data) - 5 :])
    assert result is not None
    response, rest = result
    assert response.status == 101
    assert response.headers["sec-websocket-protocol"] == "chat"
    assert rest == b"\x81\x02hi"


def test_client_accepts_case_insensitive_tokens_in_answer() -> None:
    client = ClientHandshake("h", 80, "/")
    data = server_answer(client).replace(b"Upgrade: websocket", b"Upgrade: WebSocket").replace(
        b"Connection: Upgrade", b"Connection: keep-alive, UPGRADE"
    )
    assert client.receive_data(data) is not None


def test_client_rejects_wrong_accept() -> None:
    client = ClientHandshake("h", 80, "/")
    with pytest.raises(InvalidResponse) as info:
        client.receive_data(server_answer(client, accept=expected_accept(RFC_KEY)))
    assert info.value.status == 101


def test_client_rejects_missing_accept() -> None:
    client = ClientHandshake("h", 80, "/")
    data = server_answer(client).replace(f"Sec-WebSocket-Accept: {expected_accept(client.key)}\r\n".encode(), b"")
    with pytest.raises(InvalidResponse):
        client.receive_data(data)


@pytest.mark.parametrize("status", [200, 301, 400, 403, 404, 426, 500, 503])
def test_client_non_101_status_is_carried_in_invalid_response(status: int) -> None:
    client = ClientHandshake("h", 80, "/")
    with pytest.raises(InvalidResponse) as info:
        client.receive_data(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
    assert info.value.status == status


def test_client_rejects_unoffered_subprotocol() -> None:
    client = ClientHandshake("h", 80, "/", subprotocols=["chat"])
    with pytest.raises(InvalidResponse):
        client.receive_data(server_answer(client, "Sec-WebSocket-Protocol: superchat"))


def test_client_rejects_subprotocol_when_none_offered() -> None:
    client = ClientHandshake("h", 80, "/")
    with pytest.raises(InvalidResponse):
        client.receive_data(server_answer(client, "Sec-WebSocket-Protocol: chat"))


def test_client_rejects_unoffered_extension() -> None:
    client = ClientHandshake("h", 80, "/")
    with pytest.raises(InvalidResponse):
        client.receive_data(server_answer(client, "Sec-WebSocket-Extensions: permessage-deflate"))


@pytest.mark.parametrize(
    "old, new",
    [(b"Upgrade: websocket", b"Upgrade: h2c"), (b"Connection: Upgrade", b"Connection: close")],
)
def test_client_rejects_answer_without_upgrade_tokens(old: bytes, new: bytes) -> None:
    client = ClientHandshake("h", 80, "/")
    with pytest.raises(InvalidResponse):
        client.receive_data(server_answer(client).replace(old, new))


@pytest.mark.parametrize("line", ["HTTP/1.0 101 Switching Protocols", "HTTP/1.1 abc OK", "garbage", "ICY 200 OK"])
def test_client_rejects_malformed_status_line(line: str) -> None:
    client = ClientHandshake("h", 80, "/")
    data = server_answer(client).replace(b"HTTP/1.1 101 Switching Protocols", line.encode())
    with pytest.raises(InvalidResponse):
        client.receive_data(data)


@pytest.mark.parametrize(
    "extra, named",
    [
        ("X-A: a\x01b", "0x01 in the value of header 'X-A'"),
        ("X-A: a\x00b", "0x00 (NUL) in the value of header 'X-A'"),
        ("X-A: \x7f", "0x7F (DEL) in the value of header 'X-A'"),
        ("X-A: a\rb", "CR not followed by LF"),
    ],
)
def test_client_rejects_control_characters_in_header_values(extra: str, named: str) -> None:
    client = ClientHandshake("h", 80, "/")
    with pytest.raises(InvalidResponse) as info:
        client.receive_data(server_answer(client, extra))
    assert named in str(info.value)


def test_client_rejects_bare_lf_answer() -> None:
    client = ClientHandshake("h", 80, "/")
    with pytest.raises(InvalidResponse) as info:
        client.receive_data(server_answer(client).replace(b"\r\n", b"\n"))
    assert "bare LF" in str(info.value)


def test_client_names_the_reason_phrase_for_a_control_character_there() -> None:
    client = ClientHandshake("h", 80, "/")
    data = server_answer(client).replace(b"Switching Protocols", b"Switching\x02Protocols")
    with pytest.raises(InvalidResponse) as info:
        client.receive_data(data)
    assert "in the reason phrase" in str(info.value)
