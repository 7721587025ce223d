"""Writes the seed corpus, tests/fuzz/corpus/<harness>/<name>, from scratch.

Run: python tests/fuzz/make_corpus.py   (the files are committed; rerun after changing this)

Frames are built by hand here (not with fastws' encoder), handshakes are typed out.
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from checks import RFC_KEY, join_input  # noqa: E402

KEY = b"\x37\xfa\x21\x3d"
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3, for RFC_KEY


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True, form: int | None = None) -> bytes:
    n = len(payload)
    if form is None:
        form = 0 if n < 126 else 1 if n < 65536 else 2
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if masked else 0
    head = (
        bytes([b0, m | n]) if form == 0 else bytes([b0, m | 126]) + struct.pack("!H", n) if form == 1 else bytes([b0, m | 127]) + struct.pack("!Q", n)
    )
    if not masked:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i & 3] for i, b in enumerate(payload))


def deflated(data: bytes, bits: int = 15) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -bits)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def halves(data: bytes) -> list[bytes]:
    return [data[: len(data) // 2], data[len(data) // 2 :]]


def frames_seeds() -> dict[str, bytes]:
    euro = "€".encode()
    seeds: dict[str, bytes] = {}
    for masked in (True, False):
        side = "to-server" if masked else "to-client"
        f = functools.partial(frame, masked=masked)
        streams = {
            "text": (0, f(1, "héllo wörld".encode())),
            "binary": (0, f(2, bytes(range(40)))),
            "binary-16bit": (0, f(2, b"x" * 300)),
            "binary-64bit-form": (0x80, f(2, b"abc", form=2)),
            "fragmented-text-ping-inside": (0, f(1, b"h\xc3", fin=False) + f(9, b"p") + f(0, b"\xa9llo " + euro[:1], fin=False) + f(0, euro[1:])),
            "ping-pong": (0x80, f(9, b"ping!") + f(10, b"pong")),
            "close-1000-reason": (0, f(8, struct.pack("!H", 1000) + b"bye") + f(2, b"after")),
            "close-empty": (0, f(8)),
            "close-4999": (0, f(8, struct.pack("!H", 4999))),
            "close-bad-code": (0, f(8, struct.pack("!H", 1005))),
            "close-bad-reason": (0, f(8, struct.pack("!H", 1001) + b"\xff")),
            "invalid-utf8": (0, f(1, b"ok \xed\xa0\x80")),
            "reserved-opcode": (0, f(3, b"x")),
            "too-big-max16": (4, f(2, b"0123456789", fin=False) + f(0, b"abcdefghij")),
            "fragments-max3": (0x20, f(2, b"a", fin=False) + f(0, b"b", fin=False) + f(0, b"c", fin=False) + f(0, b"d")),
            "deflate-text": (0x08, f(1, deflated(b"compressed text " * 8), rsv=4) + f(9)),
            "deflate-fragmented": (0x08, f(2, halves(deflated(bytes(200)))[0], fin=False, rsv=4) + f(0, halves(deflated(bytes(200)))[1])),
            "deflate-9-reset": (0x10, f(1, deflated(b"abcabcabc" * 20, 9), rsv=4) + f(1, deflated(b"again", 9), rsv=4)),
            "identity-rsv1": (0x18, f(1, b"plain but rsv1", rsv=4)),
            "rsv1-no-extension": (0, f(1, b"a", rsv=4)),
        }
        for name, (options, stream) in streams.items():
            seeds[f"{side}-{name}"] = join_input(options, [stream])
        # The same stream cut in awkward places, fed to the compiled core through its buffer.
        stream = f(1, "split ✓ text".encode(), fin=False) + f(10, b"") + f(0, b" end") + f(8, struct.pack("!H", 1000))
        seeds[f"{side}-chunked-buffer"] = join_input(0x40, [stream[:1], stream[1:3], stream[3:9], stream[9:20], stream[20:]])
    return seeds


def request(*extra: str, method: str = "GET", key: str = RFC_KEY) -> bytes:
    lines = [
        f"{method} /chat HTTP/1.1",
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(*extra: str, status: str = "101 Switching Protocols", accept: str = ACCEPT) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {accept}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def handshake_seeds() -> dict[str, bytes]:
    server = {
        "plain": (0, request()),
        "rfc-example": (2, request("Origin: http://example.com", "Sec-WebSocket-Protocol: chat, superchat")),
        "deflate-offer": (2, request("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")),
        "deflate-offers-two": (
            4,
            request("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; client_max_window_bits, permessage-deflate"),
        ),
        "deflate-no-context": (
            6,
            request(
                "Origin: https://a.example",
                "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                "Sec-WebSocket-Protocol: x",
            ),
        ),
        "post": (0, request(method="POST")),
        "no-upgrade": (0, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        "bad-key": (0, request(key="short")),
        "trailing-frame": (0, request() + frame(1, b"hi")),
    }
    client = {
        "plain": (1, response()),
        "subprotocol": (3, response("Sec-WebSocket-Protocol: chat")),
        "deflate": (3, response("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")),
        "deflate-no-context": (5, response("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover")),
        "deflate-9": (7, response("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9; client_max_window_bits=9")),
        "rejected-403": (1, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"),
        "wrong-accept": (1, response(accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
        "trailing-frame": (1, response() + frame(2, b"data", masked=False)),
    }
    seeds = {}
    for name, (options, head) in server.items():
        seeds[f"server-{name}"] = join_input(options, [head])
    for name, (options, head) in client.items():
        seeds[f"client-{name}"] = join_input(options, [head])
    head = request("Sec-WebSocket-Extensions: permessage-deflate")
    seeds["server-chunked"] = join_input(2, [head[:5], head[5:40], head[40:41], head[41:]])
    return seeds


def deflate_seeds() -> dict[str, bytes]:
    # [client settings (3)][server settings (3)][header values, one a line]
    default = bytes([3, 5, 7])  # window 12, peer 12, level 6
    small = bytes([0, 2, 10])  # window 9, peer 9, level 9
    wide = bytes([6, 0x30, 0])  # window 15, peer None, both no_context_takeover
    values = [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=10; server_max_window_bits=9",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=8, permessage-deflate",
        'permessage-deflate; client_max_window_bits="15"',
        "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=15",
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12\npermessage-deflate",
        "permessage-deflate; unknown=1",
        "",
    ]
    seeds = {}
    for i, text in enumerate(values):
        settings = (default + small, small + wide, wide + default)[i % 3]
        seeds[f"value-{i:02d}"] = settings + text.encode("latin-1")
    return seeds


def main() -> None:
    for harness, seeds in (("frames", frames_seeds()), ("handshake", handshake_seeds()), ("deflate", deflate_seeds())):
        folder = os.path.join(HERE, "corpus", harness)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        for name, data in seeds.items():
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(data)
        print(f"{harness}: {len(seeds)} files")


if __name__ == "__main__":
    main()
