"""permessage-deflate (RFC 7692): negotiation and the per-connection codec.

The protocol cores call ``decode`` once per received frame of a compressed
message and ``encode`` once per sent data frame. zlib objects are created on
first use and dropped after each message when context takeover is off, so an
idle connection holds no zlib memory unless it keeps a compression context.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import InvalidResponse, PayloadTooBig, ProtocolError

__all__ = [
    "Deflate",
    "PerMessageDeflate",
    "CompressionOption",
    "parse_extensions",
    "server_extension_factory",
    "client_extension",
]

NAME = "permessage-deflate"
# The empty stored block that ends every compressed message (RFC 7692 7.2.1).
_TAIL = b"\x00\x00\xff\xff"
# zlib cannot compress with a 256-byte window (raw deflate rejects 8 bits),
# so we never promise to; inflating uses at least 9 bits, which reads 8-bit streams.
_MIN_DEFLATE_BITS = 9


@dataclass(frozen=True)
class Deflate:
    """Settings of permessage-deflate; ``compression="deflate"`` means ``Deflate()``.

    The defaults bound zlib memory per connection to about 50 KiB while a
    compression context is kept: our compressor uses a ``window_bits`` window
    (2**window_bits bytes) and ``mem_level`` hash tables; ``peer_window_bits``
    asks the peer to compress with at most that window, which bounds our
    decompressor the same way. ``no_context_takeover`` resets our compressor
    after each message (less memory between messages, worse ratio);
    ``peer_no_context_takeover`` asks the peer to do the same.
    """

    window_bits: int = 12
    mem_level: int = 5
    level: int = 6
    peer_window_bits: int | None = 12
    no_context_takeover: bool = False
    peer_no_context_takeover: bool = False

    def __post_init__(self) -> None:
        if not _MIN_DEFLATE_BITS <= self.window_bits <= 15:
            raise ValueError("window_bits must be between 9 and 15 (zlib cannot compress with 8)")
        if self.peer_window_bits is not None and not 8 <= self.peer_window_bits <= 15:
            raise ValueError("peer_window_bits must be between 8 and 15, or None")
        if not 1 <= self.mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        if not -1 <= self.level <= 9:
            raise ValueError("level must be between -1 and 9")


CompressionOption = str | Deflate | None


def deflate_settings(compression: CompressionOption) -> Deflate | None:
    """The settings for a ``compression`` option: "deflate", a Deflate, or None/"off"."""
    if compression is None or compression == "off":
        return None
    if compression == "deflate":
        return Deflate()
    if isinstance(compression, Deflate):
        return compression
    raise ValueError(f"compression must be 'deflate', a fastws.extensions.Deflate or None, not {compression!r}")


class PerMessageDeflate:
    """The codec of one connection, after negotiation.

    ``compress_bits``/``decompress_bits``: the windows each direction uses;
    ``reset_compressor``/``reset_decompressor``: no context takeover in that direction.
    """

    __slots__ = (
        "compress_bits",
        "decompress_bits",
        "reset_compressor",
        "reset_decompressor",
        "level",
        "mem_level",
        "_compressor",
        "_decompressor",
    )

    def __init__(
        self,
        *,
        compress_bits: int = 15,
        decompress_bits: int = 15,
        reset_compressor: bool = False,
        reset_decompressor: bool = False,
        level: int = 6,
        mem_level: int = 8,
    ) -> None:
        self.compress_bits = compress_bits
        self.decompress_bits = max(decompress_bits, _MIN_DEFLATE_BITS)
        self.reset_compressor = reset_compressor
        self.reset_decompressor = reset_decompressor
        self.level = level
        self.mem_level = mem_level
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def decode(self, payload: bytes, fin: bool, msg_size: int, max_size: int | None) -> bytes:
        """Inflate one frame of a compressed message; ``msg_size`` bytes of it were inflated before.

        Never produces more than ``max_size - msg_size`` bytes: a frame that would
        inflate past the limit raises PayloadTooBig (1009) after at most one byte more.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self.decompress_bits)
        try:
            if max_size is None:
                data = decompressor.decompress(payload)
                if fin:
                    data += decompressor.decompress(_TAIL)
            else:
                room = max_size - msg_size
                data = decompressor.decompress(payload, room + 1)
                if fin and len(data) <= room:
                    data += decompressor.decompress(_TAIL, room - len(data) + 1)
                if len(data) > room:
                    raise PayloadTooBig(f"message larger than max_size ({max_size} bytes) once decompressed")
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}", 1007) from None
        if fin and self.reset_decompressor:
            self._decompressor = None
        return data

    def encode(self, opcode: int, payload: bytes | bytearray | memoryview, fin: bool) -> tuple[bytes, bool]:
        """Deflate one data frame; RSV1 marks the first frame of a compressed message."""
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(
                self.level, zlib.DEFLATED, -self.compress_bits, self.mem_level
            )
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if fin:
            data = data[:-4]  # a sync flush always ends with the empty block _TAIL
            if self.reset_compressor:
                self._compressor = None
        return data, opcode != 0

    def __repr__(self) -> str:
        return (
            f"<PerMessageDeflate compress_bits={self.compress_bits} decompress_bits={self.decompress_bits}"
            f" reset_compressor={self.reset_compressor} reset_decompressor={self.reset_decompressor}>"
        )


# -- Sec-WebSocket-Extensions header --------------------------------------------------

Params = dict[str, str | None]


class _BadHeader(ValueError):
    pass


def parse_extensions(values: list[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Parse Sec-WebSocket-Extensions field values into (name, [(param, value)]) in order.

    Values may be tokens or quoted strings; raises ValueError on a malformed header.
    """
    text = ", ".join(values)
    result: list[tuple[str, list[tuple[str, str | None]]]] = []
    pos = 0
    n = len(text)

    def skip_ws(i: int) -> int:
        while i < n and text[i] in " \t":
            i += 1
        return i

    def token(i: int) -> tuple[str, int]:
        start = i
        while i < n and text[i] not in ' \t,;="':
            i += 1
        if i == start:
            raise _BadHeader(f"expected a token at {start} in {text[:100]!r}")
        return text[start:i], i

    while True:
        pos = skip_ws(pos)
        if pos < n and text[pos] == ",":  # empty list elements are allowed
            pos += 1
            continue
        if pos >= n:
            break
        name, pos = token(pos)
        params: list[tuple[str, str | None]] = []
        while True:
            pos = skip_ws(pos)
            if pos >= n or text[pos] == ",":
                break
            if text[pos] != ";":
                raise _BadHeader(f"expected ';' or ',' at {pos} in {text[:100]!r}")
            pos = skip_ws(pos + 1)
            key, pos = token(pos)
            pos = skip_ws(pos)
            value: str | None = None
            if pos < n and text[pos] == "=":
                pos = skip_ws(pos + 1)
                if pos < n and text[pos] == '"':
                    end = text.find('"', pos + 1)
                    if end < 0 or "\\" in text[pos + 1 : end]:
                        raise _BadHeader("unterminated or escaped quoted string")
                    value, pos = text[pos + 1 : end], end + 1
                else:
                    value, pos = token(pos)
            params.append((key.lower(), value))
        result.append((name.lower(), params))
    return result


def _window_bits(value: str | None, *, optional: bool) -> int | None:
    """A max_window_bits value: a decimal 8..15 without leading zeros (or nothing if ``optional``)."""
    if value is None:
        if optional:
            return None
        raise _BadHeader("max_window_bits needs a value")
    if not (value.isdigit() and value[0] != "0" and 8 <= int(value) <= 15):
        raise _BadHeader(f"invalid max_window_bits {value[:16]!r}")
    return int(value)


def _checked_params(params: list[tuple[str, str | None]]) -> Params:
    """The parameters as a dict; _BadHeader for unknown, repeated or malformed ones."""
    found: Params = {}
    for key, value in params:
        if key in found:
            raise _BadHeader(f"parameter {key} repeated")
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                raise _BadHeader(f"{key} takes no value")
        elif key == "server_max_window_bits":
            _window_bits(value, optional=False)
        elif key == "client_max_window_bits":
            _window_bits(value, optional=True)
        else:
            raise _BadHeader(f"unknown parameter {key[:32]!r}")
        found[key] = value
    return found


def _accept_offer(params: Params, settings: Deflate) -> tuple[str, PerMessageDeflate] | None:
    """Our answer to one offer, or None if we cannot honour it."""
    answer = [NAME]
    reset_compressor = settings.no_context_takeover or "server_no_context_takeover" in params
    if reset_compressor:
        answer.append("server_no_context_takeover")
    reset_decompressor = settings.peer_no_context_takeover or "client_no_context_takeover" in params
    if reset_decompressor:
        answer.append("client_no_context_takeover")
    compress_bits = settings.window_bits
    if "server_max_window_bits" in params:
        compress_bits = min(compress_bits, int(params["server_max_window_bits"] or 15))
        if compress_bits < _MIN_DEFLATE_BITS:
            return None  # zlib cannot compress within a 256-byte window
        answer.append(f"server_max_window_bits={compress_bits}")
    decompress_bits = 15
    if "client_max_window_bits" in params:
        offered = _window_bits(params["client_max_window_bits"], optional=True)
        wanted = min(offered or 15, max(settings.peer_window_bits or 15, _MIN_DEFLATE_BITS))
        if wanted < 15 or offered is not None:
            decompress_bits = wanted
            answer.append(f"client_max_window_bits={wanted}")
    extension = PerMessageDeflate(
        compress_bits=compress_bits,
        decompress_bits=decompress_bits,
        reset_compressor=reset_compressor,
        reset_decompressor=reset_decompressor,
        level=settings.level,
        mem_level=settings.mem_level,
    )
    return "; ".join(answer), extension


def server_extension_factory(
    compression: CompressionOption,
) -> Callable[[list[str]], tuple[str | None, PerMessageDeflate | None]] | None:
    """For ``ServerHandshake(extension_factory=...)``: picks the first offer we can honour.

    Malformed or unacceptable offers are declined (the connection opens without
    compression) rather than refused.
    """
    settings = deflate_settings(compression)
    if settings is None:
        return None

    def negotiate(values: list[str]) -> tuple[str | None, PerMessageDeflate | None]:
        try:
            offers = parse_extensions(values)
        except ValueError:
            return None, None
        for name, params in offers:
            if name != NAME:
                continue
            try:
                checked = _checked_params(params)
            except ValueError:
                continue
            accepted = _accept_offer(checked, settings)
            if accepted is not None:
                return accepted
        return None, None

    return negotiate


class ClientDeflate:
    """The client's offer, and the check of the server's answer to it."""

    def __init__(self, settings: Deflate) -> None:
        self.settings = settings
        offer = [NAME, "client_max_window_bits"]
        if settings.peer_no_context_takeover:
            offer.append("server_no_context_takeover")
        if settings.no_context_takeover:
            offer.append("client_no_context_takeover")
        fallback = "; ".join(offer)
        if settings.peer_window_bits is not None and settings.peer_window_bits < 15:
            # First ask for a small server window; a server that cannot honour it takes the fallback.
            offer.append(f"server_max_window_bits={max(settings.peer_window_bits, _MIN_DEFLATE_BITS)}")
            self.offer = "; ".join(offer) + ", " + fallback
        else:
            self.offer = fallback

    def accept(self, values: list[str]) -> PerMessageDeflate | None:
        """The codec the server's Sec-WebSocket-Extensions values agree on; InvalidResponse if unacceptable."""
        if not values:
            return None
        try:
            extensions = parse_extensions(values)
            if len(extensions) != 1 or extensions[0][0] != NAME:
                raise _BadHeader("server accepted an extension that was not offered, or several")
            params = _checked_params(extensions[0][1])
            settings = self.settings
            compress_bits = settings.window_bits
            if "client_max_window_bits" in params:
                limit = _window_bits(params["client_max_window_bits"], optional=False) or 15
                if limit < _MIN_DEFLATE_BITS:
                    raise _BadHeader("client_max_window_bits=8 cannot be honoured (zlib needs 9 bits or more)")
                compress_bits = min(compress_bits, limit)
            # Absent: the server took the fallback offer and may use a 15-bit window.
            decompress_bits = int(params.get("server_max_window_bits") or 15)
        except ValueError as exc:
            raise InvalidResponse(f"unacceptable Sec-WebSocket-Extensions from the server: {exc}", 101) from None
        return PerMessageDeflate(
            compress_bits=compress_bits,
            decompress_bits=decompress_bits,
            reset_compressor=settings.no_context_takeover or "client_no_context_takeover" in params,
            reset_decompressor="server_no_context_takeover" in params,
            level=settings.level,
            mem_level=settings.mem_level,
        )


def client_extension(compression: CompressionOption) -> ClientDeflate | None:
    """The client side of permessage-deflate for a ``compression`` option (None when off)."""
    settings = deflate_settings(compression)
    return None if settings is None else ClientDeflate(settings)
