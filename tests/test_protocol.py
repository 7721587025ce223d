"""The sans-I/O protocol (fastws.protocol): bytes in, events and bytes out.

Frames are built by hand (tests/_wsutil.py) so that the parser is checked against
an independent encoder, and the bytes fastws writes are parsed independently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

import fastws
from _wsutil import Frame, build_frame, close_payload, expected_accept, parse_frames, parse_http_head, upgrade_request
from fastws import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    FastWSError,
    Headers,
    InvalidResponse,
    PayloadTooBig,
    ProtocolError,
    Request,
    Response,
    defaults,
)
from fastws.extensions import Deflate
from fastws.protocol import (
    ACCEPTED,
    CLOSED,
    CLOSING,
    CONNECTING,
    DECIDING,
    OPEN,
    READING,
    REFUSED,
    ClientOpening,
    ClientProtocol,
    CloseReceived,
    Connected,
    Failed,
    HandshakeFailed,
    Message,
    Ping,
    Pong,
    RequestAnswered,
    ServerOpening,
    ServerProtocol,
    server_handshake,
)

TEXT, BINARY, CLOSE, PING, PONG, CONT = 1, 2, 8, 9, 10, 0


def open_server(**options: object) -> ServerProtocol:
    proto = ServerProtocol(**options)  # type: ignore[arg-type]
    assert proto.state == CONNECTING
    proto.receive_data(upgrade_request())
    assert b"".join(proto.data_to_send()).startswith(b"HTTP/1.1 101 ")
    (event,) = proto.events_received()
    assert isinstance(event, Connected)
    assert proto.state == OPEN
    return proto


def open_client(**options: object) -> ClientProtocol:
    proto = ClientProtocol("127.0.0.1", 8000, "/", **options)  # type: ignore[arg-type]
    request = b"".join(proto.data_to_send())
    match = re.search(rb"\r\nSec-WebSocket-Key: (\S+)\r\n", request)
    assert match is not None
    accept = expected_accept(match.group(1).decode())
    proto.receive_data(
        f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    (event,) = proto.events_received()
    assert isinstance(event, Connected)
    assert proto.state == OPEN
    return proto


def sent(proto: ServerProtocol | ClientProtocol) -> list[Frame]:
    frames, rest = parse_frames(b"".join(proto.data_to_send()))
    assert rest == b""
    return frames


def assert_failed(proto: ServerProtocol | ClientProtocol, code: int, events: list[object] | None = None) -> None:
    """The last event is Failed with ``code``; a close frame with that code went out; TCP is to be closed."""
    if events is None:
        events = proto.events_received()
    assert events, "no event at all"
    assert isinstance(events[-1], Failed), events
    assert events[-1].error.code == code
    frames = sent(proto)
    assert frames and frames[-1].opcode == CLOSE, frames
    assert frames[-1].close_code == code
    assert frames[-1].masked == proto.client
    assert proto.close_expected()
    # Nothing more is read after a failure.
    proto.receive_data(build_frame(TEXT, b"late", mask=not proto.client))
    assert proto.events_received() == []
    assert proto.data_to_send() == []


def feed_server(proto: ServerProtocol, *frames: bytes) -> list[object]:
    proto.receive_data(b"".join(frames))
    return proto.events_received()


# -- payload lengths ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_server_receives_every_length_form(size: int) -> None:
    proto = open_server(max_size=None)
    payload = os.urandom(size)
    assert feed_server(proto, build_frame(BINARY, payload)) == [Message(payload, False)]


@pytest.mark.parametrize("size, header_len, marker", [(0, 2, 0), (125, 2, 125), (126, 4, 126), (65535, 4, 126), (65536, 10, 127), (70000, 10, 127)])
def test_server_sends_every_length_form(size: int, header_len: int, marker: int) -> None:
    proto = open_server()
    payload = os.urandom(size)
    proto.send(payload)
    data = b"".join(proto.data_to_send())
    assert len(data) == header_len + size
    assert data[0] == 0x82
    assert data[1] == marker  # mask bit clear: servers do not mask
    if marker == 126:
        assert struct.unpack("!H", data[2:4])[0] == size
    elif marker == 127:
        assert struct.unpack("!Q", data[2:10])[0] == size
    assert data[header_len:] == payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_client_receives_every_length_form(size: int) -> None:
    proto = open_client(max_size=None)
    payload = os.urandom(size)
    proto.receive_data(build_frame(BINARY, payload, mask=False))
    assert proto.events_received() == [Message(payload, False)]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_client_masks_every_length_form(size: int) -> None:
    proto = open_client()
    payload = os.urandom(size)
    proto.send(payload)
    (frame,) = sent(proto)
    assert frame.masked
    assert frame.payload == payload
    assert (frame.fin, frame.opcode, frame.rsv) == (True, BINARY, 0)


def test_most_significant_bit_of_64_bit_length_is_a_protocol_error() -> None:
    proto = open_server(max_size=None)
    proto.receive_data(bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + b"\0\0\0\0")
    assert_failed(proto, 1002)


# -- masking --------------------------------------------------------------------------------


def test_server_rejects_unmasked_client_frame_with_1002() -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"hello", mask=False))
    assert_failed(proto, 1002)


def test_server_rejects_unmasked_control_frame_with_1002() -> None:
    proto = open_server()
    proto.receive_data(build_frame(PING, b"x", mask=False))
    assert_failed(proto, 1002)


def test_client_rejects_masked_server_frame_with_1002() -> None:
    proto = open_client()
    proto.receive_data(build_frame(TEXT, b"hello", mask=True))
    assert_failed(proto, 1002)


def test_client_masks_every_frame_with_different_keys() -> None:
    proto = open_client()
    for i in range(20):
        proto.send(f"message {i}")
    proto.ping(b"p")
    proto.close(1000)
    frames = sent(proto)
    assert len(frames) == 22
    assert all(f.masked for f in frames)
    assert len({f.key for f in frames}) == 22
    assert [f.payload for f in frames[:20]] == [f"message {i}".encode() for i in range(20)]
    assert frames[20].opcode == PING and frames[20].payload == b"p"
    assert frames[21].opcode == CLOSE and frames[21].close_code == 1000


def test_client_mask_actually_changes_the_bytes() -> None:
    proto = open_client()
    payload = b"A" * 64
    proto.send(payload)
    data = b"".join(proto.data_to_send())
    assert payload not in data  # a zero key every time would leave it readable
    (frame,) = parse_frames(data)[0]
    assert frame.payload == payload


def test_server_unmasks_frames_with_any_key() -> None:
    proto = open_server()
    for key in (b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04"):
        assert feed_server(proto, build_frame(TEXT, b"abcdefg", key=key)) == [Message(b"abcdefg", True)]


# -- text, binary, fragmentation ---------------------------------------------------------------


def test_text_and_binary_messages_are_told_apart() -> None:
    proto = open_server()
    events = feed_server(proto, build_frame(TEXT, "héllo €".encode()), build_frame(BINARY, b"\x00\xff"))
    assert events == [Message("héllo €".encode(), True), Message(b"\x00\xff", False)]


def test_send_str_is_text_and_bytes_is_binary_with_override() -> None:
    proto = open_server()
    proto.send("é")
    proto.send(b"b")
    proto.send(b"t", text=True)
    proto.send("s", text=False)
    frames = sent(proto)
    assert [(f.opcode, f.payload) for f in frames] == [(TEXT, "é".encode()), (BINARY, b"b"), (TEXT, b"t"), (BINARY, b"s")]


def test_fragmented_message_is_assembled() -> None:
    proto = open_server()
    events = feed_server(
        proto,
        build_frame(TEXT, b"Hel", fin=False),
        build_frame(CONT, b"", fin=False),
        build_frame(CONT, b"lo ", fin=False),
        build_frame(CONT, "wörld".encode(), fin=True),
    )
    assert events == [Message("Hello wörld".encode(), True)]


def test_fragments_arriving_one_at_a_time_give_one_message_at_the_end() -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(BINARY, b"\x01", fin=False)) == []
    assert feed_server(proto, build_frame(CONT, b"\x02", fin=False)) == []
    assert feed_server(proto, build_frame(CONT, b"\x03")) == [Message(b"\x01\x02\x03", False)]
    # The next message starts afresh.
    assert feed_server(proto, build_frame(TEXT, b"x")) == [Message(b"x", True)]


def test_control_frames_interleaved_in_a_fragmented_message() -> None:
    proto = open_server()
    events = feed_server(
        proto,
        build_frame(TEXT, b"one ", fin=False),
        build_frame(PING, b"p1"),
        build_frame(CONT, b"two ", fin=False),
        build_frame(PONG, b"q"),
        build_frame(PING, b""),
        build_frame(CONT, b"three"),
    )
    assert events == [Ping(b"p1"), Pong(b"q"), Ping(b""), Message(b"one two three", True)]
    frames = sent(proto)
    assert [(f.opcode, f.payload) for f in frames] == [(PONG, b"p1"), (PONG, b"")]


def test_close_inside_a_fragmented_message_ends_it() -> None:
    proto = open_server()
    events = feed_server(proto, build_frame(TEXT, b"part", fin=False), build_frame(CLOSE, close_payload(1000)))
    assert events == [CloseReceived(1000, "")]


def test_sending_fragments_with_send_frame() -> None:
    proto = open_server()
    proto.send_frame(TEXT, b"ab", fin=False)
    proto.send_frame(CONT, b"cd", fin=True)
    frames = sent(proto)
    assert [(f.fin, f.opcode, f.payload) for f in frames] == [(False, TEXT, b"ab"), (True, CONT, b"cd")]


# -- ping / pong -------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", os.urandom(125)])
def test_server_answers_ping_with_pong_of_same_payload(payload: bytes) -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(PING, payload)) == [Ping(payload)]
    (frame,) = sent(proto)
    assert (frame.opcode, frame.payload, frame.masked) == (PONG, payload, False)


def test_client_answers_ping_with_masked_pong() -> None:
    proto = open_client()
    proto.receive_data(build_frame(PING, b"hb", mask=False))
    assert proto.events_received() == [Ping(b"hb")]
    (frame,) = sent(proto)
    assert (frame.opcode, frame.payload, frame.masked) == (PONG, b"hb", True)


def test_pong_event_and_no_answer() -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(PONG, b"unsolicited")) == [Pong(b"unsolicited")]
    assert proto.data_to_send() == []


def test_ping_sends_ping_and_rejects_long_payload() -> None:
    proto = open_server()
    proto.ping(b"abc")
    (frame,) = sent(proto)
    assert (frame.opcode, frame.payload) == (PING, b"abc")
    with pytest.raises(ValueError):
        proto.ping(b"x" * 126)
    with pytest.raises(ValueError):
        proto.core.pong(b"x" * 126)  # type: ignore[union-attr]


def test_no_pong_after_we_sent_close() -> None:
    proto = open_server()
    proto.close(1000)
    sent(proto)
    assert feed_server(proto, build_frame(PING, b"late")) == [Ping(b"late")]
    assert proto.data_to_send() == []


# -- closing handshake --------------------------------------------------------------------------


def test_client_initiated_close_is_echoed_and_server_closes_tcp() -> None:
    proto = open_server()
    events = feed_server(proto, build_frame(CLOSE, close_payload(1000, b"bye")))
    assert events == [CloseReceived(1000, "bye")]
    (frame,) = sent(proto)
    assert frame.opcode == CLOSE and frame.close_code == 1000
    assert proto.close_expected()
    assert proto.state == CLOSING
    proto.connection_lost()
    assert proto.state == CLOSED


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 3000, 4999])
def test_received_close_code_is_echoed(code: int) -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(CLOSE, close_payload(code, "réason".encode()))) == [CloseReceived(code, "réason")]
    (frame,) = sent(proto)
    assert frame.close_code == code


def test_empty_close_is_answered_with_empty_close_and_reports_1005() -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(CLOSE, b"")) == [CloseReceived(1005, "")]
    (frame,) = sent(proto)
    assert frame.opcode == CLOSE and frame.payload == b""
    assert proto.close_expected()


def test_server_initiated_close_completes_when_client_answers() -> None:
    proto = open_server()
    proto.close(1001, "going away")
    (frame,) = sent(proto)
    assert (frame.close_code, frame.close_reason) == (1001, "going away")
    assert proto.state == CLOSING
    assert not proto.close_expected()  # wait for the client's close frame
    assert feed_server(proto, build_frame(CLOSE, close_payload(1001))) == [CloseReceived(1001, "")]
    assert proto.data_to_send() == []  # no second close frame
    assert proto.close_expected()


def test_client_initiated_close_from_client_side() -> None:
    proto = open_client()
    proto.close(4000, "bye")
    (frame,) = sent(proto)
    assert frame.masked and (frame.close_code, frame.close_reason) == (4000, "bye")
    assert proto.state == CLOSING
    proto.receive_data(build_frame(CLOSE, close_payload(4000), mask=False))
    assert proto.events_received() == [CloseReceived(4000, "")]
    assert proto.data_to_send() == []


def test_client_echoes_server_close() -> None:
    proto = open_client()
    proto.receive_data(build_frame(CLOSE, close_payload(1001, b"restart"), mask=False))
    assert proto.events_received() == [CloseReceived(1001, "restart")]
    (frame,) = sent(proto)
    assert frame.masked and frame.close_code == 1001


def test_close_twice_sends_one_close_frame() -> None:
    proto = open_server()
    proto.close(1000)
    proto.close(1001)
    assert len(sent(proto)) == 1


def test_messages_before_close_are_delivered_and_nothing_after_it() -> None:
    proto = open_server()
    events = feed_server(
        proto,
        build_frame(TEXT, b"before"),
        build_frame(CLOSE, close_payload(1000)),
        build_frame(TEXT, b"after"),
        build_frame(PING, b"p"),
    )
    assert events == [Message(b"before", True), CloseReceived(1000, "")]
    assert feed_server(proto, build_frame(TEXT, b"later")) == []
    assert len(sent(proto)) == 1  # only the close echo, no pong


def test_sending_after_close_raises_connection_closed() -> None:
    proto = open_server()
    proto.close(1000)
    with pytest.raises(ConnectionClosedOK) as before_answer:
        proto.send("x")
    assert before_answer.value.code == 1000
    with pytest.raises(ConnectionClosed):
        proto.ping()
    feed_server(proto, build_frame(CLOSE, close_payload(1000)))
    proto.connection_lost()
    with pytest.raises(ConnectionClosed) as info:
        proto.send(b"x")
    assert info.value.code == 1000


def test_sending_after_own_close_with_a_code_reports_that_code() -> None:
    proto = open_server()
    proto.close(4002, "bye")
    with pytest.raises(ConnectionClosedError) as info:
        proto.send("x")
    assert (info.value.code, info.value.reason) == (4002, "bye")
    feed_server(proto, build_frame(CLOSE, close_payload(4002, b"ok")))  # the peer's answer wins
    with pytest.raises(ConnectionClosedError) as info:
        proto.send("x")
    assert (info.value.code, info.value.reason) == (4002, "ok")


def test_sending_after_receiving_close_raises() -> None:
    proto = open_server()
    feed_server(proto, build_frame(CLOSE, close_payload(4001, b"x")))
    with pytest.raises(ConnectionClosed) as info:
        proto.send("x")
    assert info.value.code == 4001


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_with_invalid_code_raises_value_error(code: int) -> None:
    proto = open_server()
    with pytest.raises(ValueError):
        proto.close(code)
    assert proto.data_to_send() == []
    assert proto.state == OPEN


def test_close_reason_limit_is_123_bytes_encoded() -> None:
    proto = open_server()
    with pytest.raises(ValueError):
        proto.close(1000, "x" * 124)
    with pytest.raises(ValueError):
        proto.close(1000, "é" * 62)  # 124 bytes in UTF-8
    assert proto.data_to_send() == []
    proto.close(1000, "é" * 61 + "x")  # exactly 123 bytes
    (frame,) = sent(proto)
    assert frame.close_reason == "é" * 61 + "x"


def test_sending_before_the_handshake_is_refused() -> None:
    proto = ServerProtocol()
    with pytest.raises(FastWSError):
        proto.send("x")
    assert proto.data_to_send() == []


# -- close code validation on receipt ---------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999])
def test_valid_received_close_codes(code: int) -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(CLOSE, close_payload(code))) == [CloseReceived(code, "")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_received_close_codes_fail_with_1002(code: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(CLOSE, close_payload(code)))
    assert_failed(proto, 1002)


def test_one_byte_close_payload_fails_with_1002() -> None:
    proto = open_server()
    proto.receive_data(build_frame(CLOSE, b"\x03"))
    assert_failed(proto, 1002)


def test_invalid_utf8_close_reason_fails_with_1007() -> None:
    proto = open_server()
    proto.receive_data(build_frame(CLOSE, close_payload(1000, b"\xff\xfe")))
    assert_failed(proto, 1007)


def test_client_fails_on_invalid_close_code_from_server() -> None:
    proto = open_client()
    proto.receive_data(build_frame(CLOSE, close_payload(1005), mask=False))
    assert_failed(proto, 1002)


# -- UTF-8 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"abc\xc0\xafdef",  # overlong '/'
        b"\xed\xa0\x80",  # surrogate U+D800
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\xe2\x28\xa1",
        b"\x80",
    ],
)
def test_invalid_utf8_text_fails_with_1007(payload: bytes) -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, payload))
    assert_failed(proto, 1007)


def test_invalid_utf8_in_binary_is_fine() -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(BINARY, b"\xff\xfe")) == [Message(b"\xff\xfe", False)]


def test_utf8_sequence_split_across_fragments_is_valid() -> None:
    proto = open_server()
    euro = "€".encode()  # e2 82 ac
    events = feed_server(
        proto,
        build_frame(TEXT, b"a" + euro[:1], fin=False),
        build_frame(CONT, euro[1:2], fin=False),
        build_frame(CONT, euro[2:] + "😀".encode()[:2], fin=False),
        build_frame(CONT, "😀".encode()[2:]),
    )
    assert events == [Message("a€😀".encode(), True)]


def test_invalid_utf8_split_across_fragments_fails_with_1007() -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"ok \xe2\x82", fin=False))
    assert proto.events_received() == []
    proto.receive_data(build_frame(CONT, b"\x41rest"))  # 0x41 cannot continue the sequence
    assert_failed(proto, 1007)


def test_invalid_utf8_detected_before_the_final_fragment() -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"fine", fin=False))
    assert proto.events_received() == []
    proto.receive_data(build_frame(CONT, b"bad \xff", fin=False))
    assert_failed(proto, 1007)


def test_invalid_utf8_detected_mid_frame_when_fed_byte_by_byte() -> None:
    proto = open_server()
    payload = b"valid text, then " + b"\xc3\x28" + b" and a long tail" * 20
    data = build_frame(TEXT, payload)
    header_len = 2 + 2 + 4  # 126-form length, mask key
    assert len(payload) >= 126
    bad_at = header_len + payload.index(b"\xc3\x28") + 1
    failed_at = None
    for i in range(len(data)):
        proto.receive_data(data[i : i + 1])
        if any(isinstance(e, Failed) for e in proto.events_received()):
            failed_at = i
            break
    assert failed_at == bad_at
    assert failed_at < len(data) - 1


def test_surrogate_prefix_at_end_of_a_fragment_fails_before_the_next_fragment() -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"abc\xed\xa0", fin=False))  # only a surrogate can follow
    assert_failed(proto, 1007)


def test_truncated_utf8_at_end_of_message_fails_with_1007() -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"abc\xe2\x82"))
    assert_failed(proto, 1007)


def test_truncated_utf8_at_end_of_fragmented_message_fails_with_1007() -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"abc", fin=False))
    proto.receive_data(build_frame(CONT, b"\xf0\x9f\x98"))
    assert_failed(proto, 1007)


def test_utf8_state_is_reset_between_messages() -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(TEXT, "é".encode())) == [Message("é".encode(), True)]
    assert feed_server(proto, build_frame(TEXT, b"x")) == [Message(b"x", True)]


def test_client_fails_on_invalid_utf8_from_server() -> None:
    proto = open_client()
    proto.receive_data(build_frame(TEXT, b"\xff", mask=False))
    assert_failed(proto, 1007)


# -- max_size ----------------------------------------------------------------------------------


def test_frame_at_max_size_is_accepted() -> None:
    proto = open_server(max_size=1000)
    payload = os.urandom(1000)
    assert feed_server(proto, build_frame(BINARY, payload)) == [Message(payload, False)]


def test_frame_over_max_size_fails_with_1009_from_the_header_alone() -> None:
    proto = open_server(max_size=1000)
    frame = build_frame(BINARY, b"\0" * 1001)
    proto.receive_data(frame[:8])  # header with 16-bit length and mask key only
    events = proto.events_received()
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert isinstance(events[0].error, PayloadTooBig)
    assert_failed(proto, 1009, events)


def test_huge_declared_length_fails_with_1009_without_payload() -> None:
    proto = open_server()  # default max_size: 1 MiB
    proto.receive_data(bytes([0x82, 0xFF]) + struct.pack("!Q", 2**40) + b"abcd")
    assert_failed(proto, 1009)


def test_fragments_summing_over_max_size_fail_with_1009() -> None:
    proto = open_server(max_size=10)
    proto.receive_data(build_frame(TEXT, b"123456", fin=False))
    assert proto.events_received() == []
    proto.receive_data(build_frame(CONT, b"1234", fin=False))  # 10: still fine
    assert proto.events_received() == []
    proto.receive_data(build_frame(CONT, b"1"))  # 11
    assert_failed(proto, 1009)


def test_max_size_counts_each_message_separately() -> None:
    proto = open_server(max_size=10)
    for _ in range(5):
        assert feed_server(proto, build_frame(BINARY, b"0123456789")) == [Message(b"0123456789", False)]


def test_max_size_none_is_unlimited() -> None:
    proto = open_server(max_size=None)
    payload = os.urandom(3 * 2**20)
    assert feed_server(proto, build_frame(BINARY, payload)) == [Message(payload, False)]


def test_default_max_size_is_one_mib() -> None:
    proto = open_server()
    payload = b"\0" * 2**20
    assert feed_server(proto, build_frame(BINARY, payload)) == [Message(payload, False)]
    proto.receive_data(build_frame(BINARY, b"\0" * (2**20 + 1)))
    assert_failed(proto, 1009)


def test_control_frames_do_not_count_towards_max_size() -> None:
    proto = open_server(max_size=4)
    events = feed_server(proto, build_frame(TEXT, b"ab", fin=False), build_frame(PING, b"x" * 100), build_frame(CONT, b"cd"))
    assert events == [Ping(b"x" * 100), Message(b"abcd", True)]


def test_client_enforces_max_size() -> None:
    proto = open_client(max_size=5)
    proto.receive_data(build_frame(BINARY, b"123456", mask=False))
    assert_failed(proto, 1009)


# -- framing violations -------------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [1, 2, 3, 4, 5, 6, 7])
def test_rsv_bits_without_extension_fail_with_1002(rsv: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"x", rsv=rsv))
    assert_failed(proto, 1002)


@pytest.mark.parametrize("rsv", [1, 4])
def test_rsv_bits_on_control_frame_fail_with_1002(rsv: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(PING, b"x", rsv=rsv))
    assert_failed(proto, 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes_fail_with_1002(opcode: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(opcode, b"x"))
    assert_failed(proto, 1002)


@pytest.mark.parametrize("opcode", [3, 11])
def test_reserved_opcode_inside_fragmented_message_fails_with_1002(opcode: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"a", fin=False) + build_frame(opcode, b""))
    assert_failed(proto, 1002)


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame_fails_with_1002(opcode: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(opcode, b"", fin=False))
    assert_failed(proto, 1002)


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_control_frame_over_125_bytes_fails_with_1002(opcode: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(opcode, close_payload(1000, b"x" * 124)))  # 126 bytes
    assert_failed(proto, 1002)


def test_control_frame_of_125_bytes_is_fine() -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(PING, b"x" * 125)) == [Ping(b"x" * 125)]


def test_continuation_with_nothing_to_continue_fails_with_1002() -> None:
    proto = open_server()
    proto.receive_data(build_frame(CONT, b"orphan"))
    assert_failed(proto, 1002)


def test_continuation_after_a_complete_message_fails_with_1002() -> None:
    proto = open_server()
    assert feed_server(proto, build_frame(TEXT, b"done")) == [Message(b"done", True)]
    proto.receive_data(build_frame(CONT, b"more"))
    assert_failed(proto, 1002)


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_new_data_frame_inside_fragmented_message_fails_with_1002(opcode: int) -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"start", fin=False))
    proto.receive_data(build_frame(opcode, b"intruder"))
    assert_failed(proto, 1002)


def test_messages_before_a_bad_frame_are_delivered_first() -> None:
    proto = open_server()
    proto.receive_data(build_frame(TEXT, b"good") + build_frame(9, b"p") + build_frame(5, b"bad") + build_frame(TEXT, b"never"))
    events = proto.events_received()
    assert events[:2] == [Message(b"good", True), Ping(b"p")]
    assert isinstance(events[2], Failed) and events[2].error.code == 1002
    assert len(events) == 3


def test_failure_sends_one_close_frame_even_if_closing() -> None:
    proto = open_server()
    proto.close(1000)
    sent(proto)
    proto.receive_data(build_frame(7, b""))
    events = proto.events_received()
    assert isinstance(events[-1], Failed)
    assert proto.data_to_send() == []  # the close frame was already sent
    assert proto.close_expected()


def test_failed_error_is_a_protocol_error() -> None:
    proto = open_server()
    proto.receive_data(build_frame(CONT, b""))
    (event,) = proto.events_received()
    assert isinstance(event, Failed) and isinstance(event.error, ProtocolError)


# -- every split gives the same events ------------------------------------------------------------


def stream() -> bytes:
    return b"".join(
        [
            build_frame(TEXT, "héllo".encode(), key=b"\x11\x22\x33\x44"),
            build_frame(BINARY, bytes(range(256)) * 2, key=b"\xaa\xbb\xcc\xdd"),  # 126 form
            build_frame(TEXT, "frag€".encode()[:5], fin=False, key=b"\x01\x02\x03\x04"),
            build_frame(PING, b"ping!", key=b"\x05\x06\x07\x08"),
            build_frame(CONT, "frag€".encode()[5:], fin=False, key=b"\x09\x0a\x0b\x0c"),
            build_frame(CONT, b" end", key=b"\x0d\x0e\x0f\x10"),
            build_frame(PONG, b"", key=b"\x11\x12\x13\x14"),
            build_frame(BINARY, b"", key=b"\x15\x16\x17\x18"),
            build_frame(CLOSE, close_payload(1000, b"done"), key=b"\x19\x1a\x1b\x1c"),
        ]
    )


EXPECTED = [
    Message("héllo".encode(), True),
    Message(bytes(range(256)) * 2, False),
    Ping(b"ping!"),
    Message("frag€ end".encode(), True),
    Pong(b""),
    Message(b"", False),
    CloseReceived(1000, "done"),
]


def run_chunks(chunks: list[bytes]) -> tuple[list[object], bytes]:
    proto = open_server()
    events: list[object] = []
    for chunk in chunks:
        proto.receive_data(chunk)
        events += proto.events_received()
    return events, b"".join(proto.data_to_send())


def test_stream_in_one_piece() -> None:
    events, out = run_chunks([stream()])
    assert events == EXPECTED
    frames, rest = parse_frames(out)
    assert rest == b""
    assert [(f.opcode, f.payload) for f in frames] == [(PONG, b"ping!"), (CLOSE, close_payload(1000))]


def test_stream_byte_by_byte_gives_identical_events_and_output() -> None:
    data = stream()
    whole = run_chunks([data])
    assert run_chunks([data[i : i + 1] for i in range(len(data))]) == whole


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(stream())), max_size=30))
def test_stream_in_any_split_gives_identical_events(cuts: list[int]) -> None:
    data = stream()
    points = sorted(set(cuts))
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]
    events, _ = run_chunks(chunks)
    assert events == EXPECTED


def test_client_stream_byte_by_byte() -> None:
    data = build_frame(TEXT, b"a", fin=False, mask=False) + build_frame(PING, b"z", mask=False) + build_frame(
        CONT, b"b" * 300, mask=False
    )
    proto = open_client()
    events: list[object] = []
    for i in range(len(data)):
        proto.receive_data(data[i : i + 1])
        events += proto.events_received()
    assert events == [Ping(b"z"), Message(b"a" + b"b" * 300, True)]


# -- handshake through the sans-I/O objects --------------------------------------------------------


def test_server_handshake_with_frames_in_the_same_chunk() -> None:
    proto = ServerProtocol()
    proto.receive_data(upgrade_request() + build_frame(TEXT, b"early"))
    events = proto.events_received()
    assert isinstance(events[0], Connected)
    assert events[1:] == [Message(b"early", True)]


def test_server_handshake_failure_answers_http_error_and_ignores_the_rest() -> None:
    proto = ServerProtocol()
    proto.receive_data(upgrade_request(ws_version="8"))
    out = b"".join(proto.data_to_send())
    assert out.startswith(b"HTTP/1.1 426 ")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in out
    (event,) = proto.events_received()
    assert isinstance(event, HandshakeFailed)
    assert proto.close_expected()
    proto.receive_data(b"more")
    assert proto.events_received() == [] and proto.data_to_send() == []


def test_client_handshake_with_frames_in_the_same_chunk_and_failure() -> None:
    proto = ClientProtocol("h", 80, subprotocols=["x"])
    request = b"".join(proto.data_to_send())
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request).group(1).decode()  # type: ignore[union-attr]
    answer = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {expected_accept(key)}\r\nSec-WebSocket-Protocol: x\r\n\r\n"
    ).encode()
    proto.receive_data(answer + build_frame(BINARY, b"hi", mask=False))
    events = proto.events_received()
    assert isinstance(events[0], Connected) and events[0].subprotocol == "x"
    assert events[1:] == [Message(b"hi", False)]

    bad = ClientProtocol("h", 80)
    bad.data_to_send()
    bad.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    (event,) = bad.events_received()
    assert isinstance(event, HandshakeFailed) and event.error.status == 403  # type: ignore[attr-defined]
    assert bad.close_expected()


# -- the opening handshake driver (ServerOpening / ClientOpening), as asyncio runs it -------------


def plain_get(path: str = "/", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode()


def exchange(client: ClientProtocol, server: ServerProtocol) -> tuple[list[object], list[object]]:
    """Carry bytes both ways until neither side has more; the events of each side."""
    client_events: list[object] = []
    server_events: list[object] = []
    while True:
        to_server = b"".join(client.data_to_send())
        to_client = b"".join(server.data_to_send())
        if not to_server and not to_client:
            return client_events, server_events
        if to_server:
            server.receive_data(to_server)
        if to_client:
            client.receive_data(to_client)
        client_events += client.events_received()
        server_events += server.events_received()


def wire_frames(data: bytes) -> list[Frame]:
    frames, rest = parse_frames(data)
    assert rest == b""
    return frames


@pytest.mark.parametrize("text", [True, False])
def test_deflate_negotiated_end_to_end_between_sans_io_peers(text: bool) -> None:
    client = ClientProtocol("127.0.0.1", 8000, "/chat", compression="deflate")
    server = ServerProtocol(compression="deflate")
    request = b"".join(client.data_to_send())
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate" in request
    server.receive_data(request)
    answer = b"".join(server.data_to_send())
    head, _ = parse_http_head(answer)
    assert head.status == 101
    assert head.headers["sec-websocket-extensions"].startswith("permessage-deflate")
    client.receive_data(answer)
    (client_event,) = client.events_received()
    (server_event,) = server.events_received()
    assert isinstance(client_event, Connected) and isinstance(server_event, Connected)
    assert client_event.request.path == "/chat" == server_event.request.path
    assert client.core is not None and client.core.extension is not None
    assert server.core is not None and server.core.extension is not None

    message = "hello " * 200 if text else b"\x00\x01" * 600
    client.send(message)
    out = b"".join(client.data_to_send())
    (frame,) = wire_frames(out)
    assert frame.rsv == 4 and frame.masked, "RSV1: a compressed message"
    assert len(out) < 200, "and it is compressed"
    server.receive_data(out)
    expected = message.encode() if isinstance(message, str) else message
    assert server.events_received() == [Message(expected, text)]

    server.send(message)
    out = b"".join(server.data_to_send())
    (frame,) = wire_frames(out)
    assert frame.rsv == 4 and not frame.masked
    client.receive_data(out)
    assert client.events_received() == [Message(expected, text)]

    client.close(1000, "bye")
    client_events, server_events = exchange(client, server)
    assert server_events == [CloseReceived(1000, "bye")]
    assert [type(e) for e in client_events] == [CloseReceived] and client_events[0].code == 1000  # type: ignore[attr-defined]
    assert server.close_expected()


def test_deflate_settings_are_negotiated_like_serve_and_connect() -> None:
    settings = Deflate(window_bits=10, peer_window_bits=11, no_context_takeover=True, peer_no_context_takeover=True)
    client = ClientProtocol("h", 80, compression=settings)
    server = ServerProtocol(compression=Deflate(window_bits=15, peer_window_bits=15))
    client_events, server_events = exchange(client, server)
    assert isinstance(client_events[0], Connected) and isinstance(server_events[0], Connected)
    assert client_events[0].response is not None
    agreed = client_events[0].response.headers["Sec-WebSocket-Extensions"]
    assert "server_max_window_bits=11" in agreed and "server_no_context_takeover" in agreed
    assert server.core is not None and client.core is not None
    assert server.core.extension.compress_bits == 11 == client.core.extension.decompress_bits
    assert server.core.extension.reset_compressor and client.core.extension.reset_decompressor
    assert client.core.extension.compress_bits == 10 and client.core.extension.reset_compressor
    for _ in range(3):  # without context takeover every message starts afresh
        client.send("again and again " * 20)
        _, server_events = exchange(client, server)
        assert server_events == [Message(b"again and again " * 20, True)]


@pytest.mark.parametrize("client_compression, server_compression", [("deflate", None), (None, "deflate"), (None, None)])
def test_no_deflate_unless_both_sides_want_it(client_compression: str | None, server_compression: str | None) -> None:
    client = ClientProtocol("h", 80, compression=client_compression)
    server = ServerProtocol(compression=server_compression)
    client_events, _ = exchange(client, server)
    assert isinstance(client_events[0], Connected) and client_events[0].response is not None
    assert "Sec-WebSocket-Extensions" not in client_events[0].response.headers
    assert client.core is not None and client.core.extension is None
    assert server.core is not None and server.core.extension is None
    client.send("plain")
    (frame,) = wire_frames(b"".join(client.data_to_send()))
    assert frame.rsv == 0


def test_client_refuses_a_deflate_answer_it_cannot_honour() -> None:
    client = ClientProtocol("h", 80, compression="deflate")
    request = b"".join(client.data_to_send())
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", request).group(1).decode()  # type: ignore[union-attr]
    client.receive_data(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {expected_accept(key)}\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8\r\n\r\n".encode()
    )
    (event,) = client.events_received()
    assert isinstance(event, HandshakeFailed) and isinstance(event.error, InvalidResponse)
    assert "Sec-WebSocket-Extensions" in str(event.error)
    assert client.close_expected() and client.state == CONNECTING


def test_server_declines_a_malformed_offer_and_opens_without_compression() -> None:
    server = ServerProtocol(compression="deflate")
    server.receive_data(upgrade_request(extra=[("Sec-WebSocket-Extensions", "permessage-deflate; bogus=1")]))
    head, _ = parse_http_head(b"".join(server.data_to_send()))
    assert head.status == 101 and "sec-websocket-extensions" not in head.headers
    assert server.core is not None and server.core.extension is None


def health(request: Request) -> Response | None:
    if request.path == "/healthz":
        return Response(200, Headers([("Content-Type", "text/plain"), ("X-Check", "yes")]), b"ok\n")
    return None


def test_process_request_answers_plain_http_and_closes() -> None:
    server = ServerProtocol(process_request=health)
    server.receive_data(plain_get("/healthz"))
    out = b"".join(server.data_to_send())
    head, body = parse_http_head(out)
    assert (head.status, body) == (200, b"ok\n")
    assert head.headers["x-check"] == "yes" and head.headers["content-length"] == "3"
    assert head.headers["connection"] == "close"
    (event,) = server.events_received()
    assert isinstance(event, RequestAnswered)
    assert event.request.path == "/healthz" and event.response.status == 200
    assert server.close_expected() and server.state == CONNECTING
    server.receive_data(b"anything more")
    assert server.events_received() == [] and server.data_to_send() == []


def test_process_request_none_goes_on_with_the_upgrade_and_frames_after_the_head() -> None:
    seen: list[str] = []

    def decide(request: Request) -> Response | None:
        seen.append(request.path)
        return health(request)

    server = ServerProtocol(process_request=decide)
    server.receive_data(upgrade_request("/room") + build_frame(TEXT, b"early"))
    assert seen == ["/room"]
    assert b"".join(server.data_to_send()).startswith(b"HTTP/1.1 101 ")
    events = server.events_received()
    assert isinstance(events[0], Connected) and events[1:] == [Message(b"early", True)]


def test_process_request_none_on_a_plain_get_is_426() -> None:
    server = ServerProtocol(process_request=health)
    server.receive_data(plain_get("/other"))
    head, _ = parse_http_head(b"".join(server.data_to_send()))
    assert head.status == 426 and head.headers["upgrade"] == "websocket"
    (event,) = server.events_received()
    assert isinstance(event, HandshakeFailed) and event.error.status == 426  # type: ignore[attr-defined]


def test_process_request_that_raises_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Request) -> Response | None:
        raise RuntimeError("boom")

    server = ServerProtocol(process_request=broken)
    with caplog.at_level(logging.ERROR, logger="fastws"):
        server.receive_data(plain_get("/"))
    head, body = parse_http_head(b"".join(server.data_to_send()))
    assert head.status == 500 and body == b"Internal Server Error\n"
    (event,) = server.events_received()
    assert isinstance(event, RequestAnswered) and event.response.status == 500
    (record,) = [r for r in caplog.records if r.name == "fastws.server"]
    assert record.getMessage() == "process_request failed" and record.exc_info is not None
    assert server.close_expected()


def test_process_request_must_be_synchronous_in_sans_io(caplog: pytest.LogCaptureFixture) -> None:
    async def coroutine_function(request: Request) -> Response | None:
        return None

    with pytest.raises(TypeError):
        ServerProtocol(process_request=coroutine_function)

    def returns_an_awaitable(request: Request) -> Any:
        return coroutine_function(request)

    server = ServerProtocol(process_request=returns_an_awaitable)
    with caplog.at_level(logging.ERROR, logger="fastws"):
        server.receive_data(upgrade_request())
    head, _ = parse_http_head(b"".join(server.data_to_send()))
    assert head.status == 500
    assert any("synchronous" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "HEAD"])
def test_other_methods_are_405_with_allow_get_and_head_gets_no_body(method: str) -> None:
    calls: list[Request] = []
    server = ServerProtocol(process_request=lambda request: calls.append(request))  # type: ignore[func-returns-value]
    server.receive_data(plain_get("/healthz", method))
    out = b"".join(server.data_to_send())
    head, body = parse_http_head(out)
    assert head.status == 405 and head.headers["allow"] == "GET"
    if method == "HEAD":  # the headers a GET would get, no body
        assert int(head.headers["content-length"]) > 0 and body == b""
    else:
        assert b"not allowed" in body
    (event,) = server.events_received()
    assert isinstance(event, HandshakeFailed) and event.error.status == 405  # type: ignore[attr-defined]
    assert calls == [], "process_request never sees another method"
    assert server.close_expected()


def test_upgrade_with_another_method_is_400() -> None:
    server = ServerProtocol()
    server.receive_data(upgrade_request(method="POST"))
    head, _ = parse_http_head(b"".join(server.data_to_send()))
    assert head.status == 400


@pytest.mark.parametrize(
    "data, status",
    [
        (plain_get("/healthz\x00"), 400),
        (plain_get("/").replace(b"\r\n", b"\n"), 400),
        (b"GET /" + b"a" * 9000, 414),
    ],
    ids=["nul-in-target", "bare-lf", "long-target"],
)
def test_strict_head_parsing_refuses_before_process_request(data: bytes, status: int) -> None:
    calls: list[Request] = []
    server = ServerProtocol(process_request=lambda request: calls.append(request))  # type: ignore[func-returns-value]
    server.receive_data(data)
    head, _ = parse_http_head(b"".join(server.data_to_send()))
    assert head.status == status
    assert calls == []
    assert server.close_expected()


def test_head_arriving_byte_by_byte() -> None:
    server = ServerProtocol()
    request = upgrade_request()
    for i in range(len(request)):
        assert server.state == CONNECTING
        server.receive_data(request[i : i + 1])
    assert server.state == OPEN
    assert isinstance(server.events_received()[0], Connected)


def test_select_subprotocol_and_server_header_like_serve() -> None:
    server = ServerProtocol(select_subprotocol=lambda request, offered: offered[-1], server_header="test/9")
    server.receive_data(upgrade_request(extra=[("Sec-WebSocket-Protocol", "a, b")]))
    head, _ = parse_http_head(b"".join(server.data_to_send()))
    assert head.headers["sec-websocket-protocol"] == "b"
    assert head.headers["server"] == "test/9"
    (event,) = server.events_received()
    assert isinstance(event, Connected) and event.subprotocol == "b"


def test_defaults_are_those_of_serve_and_connect() -> None:
    server = ServerProtocol()
    server.receive_data(upgrade_request())
    head, _ = parse_http_head(b"".join(server.data_to_send()))
    assert head.headers["server"] == f"fastws/{fastws.__version__}"
    assert server.core is not None
    assert (server.core.max_size, server.core.max_fragments) == (defaults.MAX_SIZE, defaults.MAX_FRAGMENTS)
    client = ClientProtocol("example.com", 443, "/p", secure=True, origin="https://o.example")
    request = b"".join(client.data_to_send())
    assert b"\r\nHost: example.com\r\n" in request
    assert b"\r\nOrigin: https://o.example\r\n" in request
    assert f"\r\nUser-Agent: fastws/{fastws.__version__}\r\n".encode() in request


def test_server_opening_waits_for_an_asynchronous_process_request() -> None:
    """What the asyncio server does with a coroutine process_request: DECIDING, await, decide()."""

    async def decide(request: Request) -> Response | None:
        return None

    opening = ServerOpening(server_handshake(compression="deflate"), decide)
    offer = ("Sec-WebSocket-Extensions", "permessage-deflate")
    assert opening.receive_data(upgrade_request(extra=[offer])[:20]) == READING
    assert opening.receive_data(upgrade_request(extra=[offer])[20:] + b"one") == DECIDING
    assert opening.receive_data(b"two") == DECIDING
    decision, opening.decision = opening.decision, None
    assert decision is not None
    assert opening.decide(asyncio.run(decision)) == ACCEPTED  # type: ignore[arg-type]
    assert opening.answer.startswith(b"HTTP/1.1 101 ")
    assert opening.rest == b"onetwo"
    assert opening.extension is not None
    assert opening.receive_data(b"late") == ACCEPTED


def test_server_opening_answers_a_failed_asynchronous_process_request_with_500(caplog: pytest.LogCaptureFixture) -> None:
    opening = ServerOpening(server_handshake())
    opening.process_request = lambda request: asyncio.sleep(0)  # type: ignore[assignment, return-value]
    assert opening.receive_data(plain_get()) == DECIDING
    assert opening.decision is not None
    asyncio.run(opening.decision)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="fastws"):
        try:
            raise RuntimeError("in the coroutine")
        except RuntimeError:
            assert opening.process_request_failed() == REFUSED
    assert opening.answer.startswith(b"HTTP/1.1 500 ")
    assert opening.error is None and opening.response is not None
    assert any(r.exc_info for r in caplog.records)


def test_client_opening_states() -> None:
    opening = ClientOpening("h", 80, "/x", subprotocols=["p"])
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", opening.request_bytes).group(1).decode()  # type: ignore[union-attr]
    answer = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {expected_accept(key)}\r\nSec-WebSocket-Protocol: p\r\n\r\n"
    ).encode()
    assert opening.receive_data(answer[:30]) == READING
    assert opening.receive_data(answer[30:] + b"frames") == ACCEPTED
    assert (opening.subprotocol, opening.rest, opening.request.path) == ("p", b"frames", "/x")
    refused = ClientOpening("h", 80)
    assert refused.receive_data(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") == REFUSED
    assert isinstance(refused.error, InvalidResponse) and refused.error.status == 503
