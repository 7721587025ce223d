"""permessage-deflate (RFC 7692): negotiation, the codec, limits in both cores, and interop."""

from __future__ import annotations

import asyncio
import importlib
import os
import struct
import tracemalloc
import zlib
from typing import Any

import aiohttp
import pytest
import websockets
import websockets.asyncio.client
import websockets.asyncio.server

import fastws
from _wsutil import IO_TIMEOUT, RawClient, build_frame, echo_server, upgrade_request, uri_of
from fastws import _pure
from fastws.exceptions import InvalidResponse, PayloadTooBig, ProtocolError
from fastws.extensions.permessage_deflate import (
    ClientDeflate,
    Deflate,
    PerMessageDeflate,
    parse_extensions,
    server_extension_factory,
)

CORES = [_pure]
try:
    CORES.append(importlib.import_module("fastws._speedups"))
except ImportError:  # the pure path alone is still worth testing
    pass


@pytest.fixture(params=CORES, ids=lambda m: m.IMPLEMENTATION)
def impl(request: pytest.FixtureRequest) -> Any:
    return request.param


async def wait(aw: Any, timeout: float = IO_TIMEOUT) -> Any:
    return await asyncio.wait_for(aw, timeout)


def deflate(data: bytes, bits: int = 15) -> bytes:
    """One compressed message payload, as a peer would send it."""
    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


# -- negotiation: server ---------------------------------------------------------------


def negotiate(*values: str, compression: Any = "deflate") -> tuple[str | None, PerMessageDeflate | None]:
    factory = server_extension_factory(compression)
    assert factory is not None
    return factory(list(values))


def test_compression_off_has_no_factory() -> None:
    assert server_extension_factory(None) is None
    assert server_extension_factory("off") is None
    with pytest.raises(ValueError, match="compression must be"):
        server_extension_factory("gzip")


def test_default_offer_is_accepted() -> None:
    header, ext = negotiate("permessage-deflate")
    assert header == "permessage-deflate"
    assert ext is not None
    # We compress with our conservative window; the client may use 15 bits (it did not offer a limit).
    assert (ext.compress_bits, ext.decompress_bits) == (12, 15)
    assert not ext.reset_compressor and not ext.reset_decompressor


def test_bare_client_max_window_bits_is_answered_with_our_limit() -> None:
    header, ext = negotiate("permessage-deflate; client_max_window_bits")
    assert header == "permessage-deflate; client_max_window_bits=12"
    assert ext is not None and ext.decompress_bits == 12


def test_client_max_window_bits_value_is_kept_when_smaller() -> None:
    header, ext = negotiate("permessage-deflate; client_max_window_bits=10")
    assert header == "permessage-deflate; client_max_window_bits=10"
    assert ext is not None and ext.decompress_bits == 10


def test_server_max_window_bits_and_no_context_takeover() -> None:
    header, ext = negotiate(
        "permessage-deflate; server_max_window_bits=10; server_no_context_takeover; client_no_context_takeover"
    )
    assert header == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
    )
    assert ext is not None
    assert ext.compress_bits == 10 and ext.reset_compressor and ext.reset_decompressor


def test_server_max_window_bits_above_ours_is_answered_with_ours() -> None:
    header, ext = negotiate('permessage-deflate; server_max_window_bits="15"')
    assert header == "permessage-deflate; server_max_window_bits=12"
    assert ext is not None and ext.compress_bits == 12


def test_window_of_8_bits_is_declined_for_the_next_offer() -> None:
    # zlib cannot compress within 256 bytes: that offer is declined, the fallback taken.
    header, ext = negotiate("permessage-deflate; server_max_window_bits=8, permessage-deflate")
    assert header == "permessage-deflate" and ext is not None
    assert negotiate("permessage-deflate; server_max_window_bits=8") == (None, None)


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; foo=1",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "x-webkit-deflate-frame",
        'permessage-deflate; server_max_window_bits="10',
        "permessage-deflate;; ;",
    ],
)
def test_offers_we_cannot_honour_are_declined(offer: str) -> None:
    assert negotiate(offer) == (None, None)


def test_unknown_extension_before_ours_is_skipped() -> None:
    header, ext = negotiate("x-foo; a=b, permessage-deflate; client_max_window_bits")
    assert header == "permessage-deflate; client_max_window_bits=12" and ext is not None


def test_settings_are_configurable() -> None:
    settings = Deflate(window_bits=15, mem_level=8, peer_window_bits=None, no_context_takeover=True)
    header, ext = negotiate("permessage-deflate; client_max_window_bits", compression=settings)
    assert header == "permessage-deflate; server_no_context_takeover"
    assert ext is not None and ext.compress_bits == 15 and ext.decompress_bits == 15 and ext.mem_level == 8
    with pytest.raises(ValueError, match="window_bits"):
        Deflate(window_bits=8)


def test_parse_extensions_quoted_and_several() -> None:
    parsed = parse_extensions(['permessage-deflate; client_max_window_bits="10", foo', "Bar; X"])
    assert parsed == [
        ("permessage-deflate", [("client_max_window_bits", "10")]),
        ("foo", []),
        ("bar", [("x", None)]),
    ]


# -- negotiation: client -------------------------------------------------------------------


def test_client_offer_asks_for_a_small_window_with_a_fallback() -> None:
    client = ClientDeflate(Deflate())
    assert client.offer == (
        "permessage-deflate; client_max_window_bits; server_max_window_bits=12, "
        "permessage-deflate; client_max_window_bits"
    )
    ext = client.accept(["permessage-deflate; server_max_window_bits=12; client_max_window_bits=10"])
    assert ext is not None and (ext.compress_bits, ext.decompress_bits) == (10, 12)
    ext = client.accept(["permessage-deflate; client_no_context_takeover; server_no_context_takeover"])
    assert ext is not None and ext.reset_compressor and ext.reset_decompressor and ext.decompress_bits == 15
    assert client.accept([]) is None


@pytest.mark.parametrize(
    "answer",
    [
        "permessage-deflate; client_max_window_bits=8",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; mystery",
        "permessage-deflate, permessage-deflate",
        "x-other",
        "permessage-deflate; server_max_window_bits=99",
    ],
)
def test_client_refuses_answers_it_cannot_honour(answer: str) -> None:
    with pytest.raises(InvalidResponse, match="Sec-WebSocket-Extensions"):
        ClientDeflate(Deflate()).accept([answer])


# -- the codec --------------------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True])
def test_codec_round_trip_with_and_without_context_takeover(reset: bool) -> None:
    sender = PerMessageDeflate(compress_bits=10, reset_compressor=reset)
    receiver = PerMessageDeflate(decompress_bits=10, reset_decompressor=reset)
    message = os.urandom(300).hex().encode()  # compresses by half alone, to nothing as a repeat
    sizes = []
    for _ in range(3):
        payload, rsv1 = sender.encode(2, message, True)
        assert rsv1
        sizes.append(len(payload))
        assert receiver.decode(payload, True, 0, None) == message
    # With context takeover the repeats compress to almost nothing.
    assert (sizes[2] < sizes[0] / 4) is not reset
    assert (sender._compressor is None) is reset and (receiver._decompressor is None) is reset


def test_codec_fragments_set_rsv1_on_the_first_only() -> None:
    codec = PerMessageDeflate()
    data = os.urandom(1000) * 3
    first, rsv1_first = codec.encode(1, data[:1500], False)
    rest, rsv1_rest = codec.encode(0, data[1500:], True)
    assert rsv1_first and not rsv1_rest
    receiver = PerMessageDeflate()
    assert receiver.decode(first, False, 0, None) + receiver.decode(rest, True, 1500, None) == data


def test_codec_refuses_to_inflate_past_max_size() -> None:
    payload = deflate(bytes(100_000))
    codec = PerMessageDeflate()
    with pytest.raises(PayloadTooBig):
        codec.decode(payload, True, 0, 99_999)
    assert PerMessageDeflate().decode(payload, True, 0, 100_000) == bytes(100_000)
    # What earlier frames inflated to counts too.
    with pytest.raises(PayloadTooBig):
        PerMessageDeflate().decode(payload, True, 1, 100_000)


def test_codec_corrupt_data_is_1007() -> None:
    with pytest.raises(ProtocolError) as info:
        PerMessageDeflate().decode(b"\xff\xff\xff\xff", True, 0, None)
    assert info.value.code == 1007


# -- both cores -------------------------------------------------------------------------------


def make_core(impl: Any, *, max_size: int | None = 2**20, extension: Any = None) -> tuple[Any, list[Any]]:
    core = impl.ProtocolCore(False, max_size=max_size, extension=extension or PerMessageDeflate())
    events: list[Any] = []
    core._on_message = lambda c, data, is_text: events.append((data, is_text))
    core._write = events.append
    return core, events


def masked(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    return build_frame(opcode, payload, fin=fin, rsv=4 if rsv1 else 0, key=b"\x01\x02\x03\x04")


def test_core_inflates_messages_and_fragments(impl: Any) -> None:
    core, events = make_core(impl)
    text = "déjà vu " * 1000
    payload = deflate(text.encode())
    data = masked(1, payload, rsv1=True)
    # One message in one frame, fed a byte at a time at the start.
    for i in range(10):
        core.receive_data(data[i : i + 1])
    core.receive_data(data[10:])
    # The same message in three fragments (only the first has RSV1).
    third = len(payload) // 3
    core.receive_data(
        masked(1, payload[:third], fin=False, rsv1=True)
        + masked(0, payload[third : 2 * third], fin=False)
        + masked(0, payload[2 * third :])
    )
    assert events == [(text.encode(), True), (text.encode(), True)]
    assert core.failure is None and core.received_data


def test_core_refuses_invalid_utf8_after_inflating(impl: Any) -> None:
    core, events = make_core(impl)
    core.receive_data(masked(1, deflate(b"ok \xff"), rsv1=True))
    assert core.failure is not None and core.failure.code == 1007
    assert core.close_code == 1007


def test_core_bounds_the_compressed_frame(impl: Any) -> None:
    # A header announcing a 2 MiB compressed frame is refused before any payload arrives.
    core, events = make_core(impl, max_size=2**20)
    header = struct.pack("!BBQ", 0x80 | 0x40 | 2, 0x80 | 127, 2 * 2**20) + b"\x00\x00\x00\x00"
    core.receive_data(header)
    assert isinstance(core.failure, PayloadTooBig) and core.close_code == 1009
    assert impl.compressed_frame_limit(2**20) < 2 * 2**20


def test_core_rsv1_without_extension_is_1002(impl: Any) -> None:
    core = impl.ProtocolCore(False, max_size=2**20)
    core.receive_data(masked(2, deflate(b"x"), rsv1=True))
    assert core.failure is not None and core.close_code == 1002


def zero_bomb(total: int) -> bytes:
    """A compressed message of ``total`` zero bytes, built without compressing all of them.

    After a full flush a deflate stream starts afresh on a byte boundary, so the
    compressed form of 1 MiB of zeros can simply be repeated.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    piece = c.compress(bytes(2**20)) + c.flush(zlib.Z_FULL_FLUSH)
    return piece * (total // 2**20)


# A deflate block of the reserved type 3 (BFINAL=0, BTYPE=11): an inflater that gets
# this far fails with "invalid block type". After a bomb it tells an inflater that
# stopped at max_size (1009) from one that went through the whole message (1007).
INVALID_BLOCK = b"\x06" * 8


def tripwired_bomb(total: int) -> bytes:
    """zero_bomb(total) followed by an invalid deflate block."""
    bomb = zero_bomb(total) + INVALID_BLOCK
    with pytest.raises(zlib.error, match="invalid block type"):  # the tripwire works
        zlib.decompressobj(-15).decompress(zero_bomb(2**20) + INVALID_BLOCK)
    return bomb


def test_core_refuses_a_1_gib_bomb_without_inflating_it(impl: Any) -> None:
    bomb = tripwired_bomb(2**30)
    assert len(bomb) < 1.1 * 2**20  # fits under the compressed frame limit: it gets to the inflater
    frame = masked(2, bomb, rsv1=True)
    core, events = make_core(impl, max_size=2**20)
    tracemalloc.start()
    try:
        core.receive_data(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # We stop one byte past max_size: the invalid block at the end is never reached
    # (inflating the whole message would fail there with 1007), and memory stays small.
    assert isinstance(core.failure, PayloadTooBig) and core.close_code == 1009
    assert events[-1][:1] == b"\x88" and events[-1][2:4] == struct.pack("!H", 1009)  # the close frame
    assert peak < 8 * 2**20, peak


# -- over connections ----------------------------------------------------------------------------


def test_fastws_client_and_server_compress(run: Any) -> None:
    async def main() -> None:
        async with echo_server(compression="deflate", max_size=2**24) as server:
            async with fastws.connect(uri_of(server), compression="deflate", max_size=2**24) as ws:
                assert ws.conn.extension is not None
                server_conn = next(iter(server.connections))
                assert server_conn.extension is not None
                for message in ["", "hello", b"\x00" * 100_000, os.urandom(300_000), "€" * 1_000_000]:
                    await ws.send(message)
                    assert await wait(ws.recv()) == message

    run(main())


def test_compression_off_on_one_side_means_off(run: Any) -> None:
    async def main() -> None:
        async with echo_server(compression="deflate") as server:
            async with fastws.connect(uri_of(server)) as ws:
                assert ws.conn.extension is None
                await ws.send("plain")
                assert await wait(ws.recv()) == "plain"
        async with echo_server() as server:
            async with fastws.connect(uri_of(server), compression="deflate") as ws:
                assert ws.conn.extension is None
                assert "sec-websocket-extensions" not in {k.lower() for k, _ in ws.response.headers}
                await ws.send("plain")
                assert await wait(ws.recv()) == "plain"

    run(main())


def test_large_compressed_message_goes_out_in_fragments(run: Any) -> None:
    async def main() -> None:
        message = os.urandom(1000) * 1000  # 1 MB, compressible
        sent = asyncio.get_running_loop().create_future()

        async def producer(ws: fastws.WebSocket) -> None:
            await ws.send(message)
            sent.set_result(None)
            await ws.wait_closed()

        async with fastws.serve(producer, "127.0.0.1", 0, compression="deflate") as server:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            client.send(upgrade_request(extra=[("Sec-WebSocket-Extensions", "permessage-deflate")]))
            head = await client.read_http_head()
            assert head.headers["sec-websocket-extensions"] == "permessage-deflate"
            await wait(sent)
            frames = []
            while not frames or not frames[-1].fin:
                frames.append(await client.read_frame())
            assert len(frames) > 1 and frames[0].rsv == 4 and not any(f.rsv for f in frames[1:])
            assert [f.opcode for f in frames] == [2] + [0] * (len(frames) - 1)
            inflater = zlib.decompressobj(-15)
            data = b"".join(inflater.decompress(f.payload) for f in frames) + inflater.decompress(b"\x00\x00\xff\xff")
            assert data == message
            client.close()

    run(main())


def test_bomb_over_a_connection_is_closed_with_1009(run: Any) -> None:
    bomb = tripwired_bomb(2**30)  # 1009, not 1007: the server stopped inflating at max_size

    async def main() -> None:
        async with echo_server(compression="deflate", max_size=2**20) as server:
            client = await RawClient.open(server.sockets[0].getsockname()[1])
            client.send(upgrade_request(extra=[("Sec-WebSocket-Extensions", "permessage-deflate")]))
            head = await client.read_http_head()
            assert head.headers["sec-websocket-extensions"] == "permessage-deflate"
            client.send(masked(2, bomb, rsv1=True))
            frame = await client.expect_close()
            assert frame.close_code == 1009

    run(main())


# -- interop -----------------------------------------------------------------------------------


def test_websockets_client_with_compression(run: Any) -> None:
    async def main() -> None:
        async with echo_server(compression="deflate", max_size=2**23) as server:
            async with websockets.asyncio.client.connect(uri_of(server), compression="deflate", max_size=2**23) as ws:
                assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
                for message in ["hello" * 1000, b"\x01" * 3_000_000, os.urandom(70_000), ""]:
                    await ws.send(message)
                    assert await wait(ws.recv()) == message

    run(main())


def test_aiohttp_client_with_compression(run: Any) -> None:
    async def main() -> None:
        async with echo_server(compression="deflate", max_size=2**23) as server:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(uri_of(server), compress=15, max_msg_size=2**23) as ws:
                    assert ws.compress  # the negotiated window bits; 0 when compression is off
                    for message in ["héllo" * 1000, "x"]:
                        await ws.send_str(message)
                        reply = await wait(ws.receive())
                        assert reply.data == message
                    data = os.urandom(100) * 20_000
                    await ws.send_bytes(data)
                    reply = await wait(ws.receive())
                    assert reply.data == data

    run(main())


def test_fastws_client_with_websockets_server(run: Any) -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with websockets.asyncio.server.serve(echo, "127.0.0.1", 0, compression="deflate", max_size=2**23) as server:
            port = server.sockets[0].getsockname()[1]
            async with fastws.connect(f"ws://127.0.0.1:{port}/", compression="deflate", max_size=2**23) as ws:
                assert ws.conn.extension is not None
                for message in ["hello" * 1000, b"\x02" * 3_000_000, os.urandom(70_000), ""]:
                    await ws.send(message)
                    assert await wait(ws.recv()) == message

    run(main())
