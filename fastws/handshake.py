"""The HTTP/1.1 opening handshake of RFC 6455, both roles, sans-I/O.

The server side reads a request head within limits, checks it and builds the
101 answer (or the error answer that an ``InvalidRequest`` carries); the client
side builds the request and checks the server's answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

from .defaults import MAX_HEAD, MAX_HEADERS, MAX_LINE  # limits on a head (tests import them from here)
from .exceptions import InvalidOrigin, InvalidRequest, InvalidResponse

__all__ = [
    "Headers",
    "Request",
    "Response",
    "HeadReader",
    "accept_key",
    "ServerHandshake",
    "ClientHandshake",
    "http_response",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

# Bytes an HTTP/1.1 head may not carry (RFC 9110 5.5, RFC 9112 2-3): the C0
# controls but HTAB, CR and LF; DEL; a CR that does not end a line; an LF that
# does not follow a CR (a bare LF line ending, see HeadReader). _CONTROLS and
# counting CRs and LFs is the cheap check; _FORBIDDEN then finds the culprit.
_CONTROLS = bytes(range(0x20)).translate(None, b"\t\r\n") + b"\x7f"
_FORBIDDEN = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")


class Headers:
    """HTTP header fields: ordered, repeatable, looked up case-insensitively."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of ``name``; several fields of that name are joined with ', '."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k.lower() == key]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k.lower() == name.lower() for k, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` field, lower-cased."""
        return [t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class Request:
    """An HTTP request head: what a handler sees as ``ws.request``."""

    method: str
    path: str
    headers: Headers
    version: str = "HTTP/1.1"


@dataclass
class Response:
    """An HTTP response: the server's answer, or what ``process_request`` returns."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    reason: str = ""


def http_response(
    status: int, body: bytes | str = b"", headers: Sequence[tuple[str, str]] = (), *, close: bool = True, head: bool = False
) -> bytes:
    """Serialize a complete HTTP/1.1 response with a Content-Length (``head``: the answer to HEAD, without the body)."""
    if isinstance(body, str):
        body = body.encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    names = {k.lower() for k, _ in headers}
    lines += [f"{k}: {v}" for k, v in headers]
    if "content-type" not in names and body:
        lines.append("Content-Type: text/plain; charset=utf-8")
    if "content-length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if close and "connection" not in names:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


class HeadReader:
    """Collects an HTTP head (start line and header lines) within size limits.

    ``feed`` returns ``(start_line, headers, rest)`` once the blank line has
    arrived, else None. Bad or oversized input raises ``error(message, status)``
    as soon as it arrives, not when the head ends: 400 for bytes a head may not
    carry, 414 for a long start line, 431 for long or many header fields.

    Lines must end in CRLF. A bare LF is refused (400), not read as a line end:
    RFC 9112 2.2 only *allows* a recipient to accept it, every WebSocket client
    sends CRLF, and accepting it would mean two ways to split the same bytes.
    Also refused: a CR that does not end a line, and the control characters
    (C0 and DEL) anywhere; HTAB only where a header value may hold it
    (``parse_request_line`` refuses it in the request line).

    ``kind`` ("request" or "response") names the start line's parts in messages.
    Each byte is checked once however the head is split, with ``bytes.translate``
    and ``count`` (a precompiled regex only runs to name what is wrong).
    """

    def __init__(self, error: Callable[[str, int], Exception], kind: str = "request") -> None:
        self._buffer = bytearray()
        self._scanned = 0  # the checked prefix of the buffer: no forbidden byte in it
        self._lines = 0  # CRLFs in that prefix
        self._error = error
        self._kind = kind

    def feed(self, data: bytes) -> tuple[str, Headers, bytes] | None:
        buf = self._buffer
        buf += data
        scanned = self._scanned
        end = buf.find(b"\r\n\r\n", max(0, scanned - 3))
        # Check up to the end of the head (what follows may be frames), or all
        # that arrived but a last CR, which the next byte decides about.
        limit = end + 4 if end >= 0 else len(buf) - (1 if buf.endswith(b"\r") else 0)
        # No CRLF straddles ``scanned``: a last CR is never in the checked prefix.
        new = bytes(buf[scanned:limit])
        line_ends = new.count(b"\n")
        if len(new.translate(None, _CONTROLS)) != len(new) or not line_ends == new.count(b"\r") == new.count(b"\r\n"):
            bad = _FORBIDDEN.search(buf, scanned, limit)
            raise self._invalid(self._describe(bad.start()) if bad is not None else "malformed head")
        if end < 0:
            self._lines += line_ends
            self._scanned = limit
            self._check_partial()
            return None
        if end > MAX_HEAD:
            raise self._too_large(f"{self._kind} head too large")
        head = bytes(buf[:end])
        rest = bytes(buf[end + 4 :])
        self._buffer = bytearray()
        self._scanned = self._lines = 0
        lines = head.split(b"\r\n")
        start = lines[0]
        if len(start) > MAX_LINE:
            raise self._too_large("start line too long", HTTPStatus.REQUEST_URI_TOO_LONG)
        if len(lines) - 1 > MAX_HEADERS:
            raise self._too_large("too many header fields")
        headers = Headers()
        for line in lines[1:]:
            if len(line) > MAX_LINE:
                raise self._too_large("header field too long")
            name, sep, value = line.partition(b":")
            if not sep or not name or not _TOKEN_CHARS.issuperset(name):
                raise self._invalid(f"malformed header line {line[:64]!r}")
            headers.add(name.decode("ascii"), value.strip(b" \t").decode("latin-1"))
        try:
            start_line = start.decode("ascii")
        except UnicodeDecodeError:
            raise self._invalid("start line is not ASCII") from None
        return start_line, headers, rest

    def _check_partial(self) -> None:
        buf = self._buffer
        if len(buf) > MAX_HEAD:
            raise self._too_large(f"{self._kind} head too large")
        first = buf.find(b"\r\n", 0, MAX_LINE + 2)
        if (first < 0 and len(buf) > MAX_LINE) or first > MAX_LINE:
            raise self._too_large("start line too long", HTTPStatus.REQUEST_URI_TOO_LONG)
        last = buf.rfind(b"\n")
        if len(buf) - last - 1 > MAX_LINE or self._lines > MAX_HEADERS + 1:
            raise self._too_large("header fields too long or too many")

    def _describe(self, pos: int) -> str:
        """What is wrong with the forbidden byte at ``pos``, in words a client's author can act on."""
        buf = self._buffer
        byte = buf[pos]
        if byte == 0x0A:
            return "line ends in a bare LF: HTTP/1.1 lines end in CRLF"
        if byte == 0x0D:
            return "CR not followed by LF: HTTP/1.1 lines end in CRLF"
        what = f"control character 0x{byte:02X}" + {0x00: " (NUL)", 0x7F: " (DEL)"}.get(byte, "")
        line_start = buf.rfind(b"\n", 0, pos) + 1
        if line_start == 0:
            parts = ("method", "request target", "HTTP version")
            if self._kind == "response":
                parts = ("HTTP version", "status code", "reason phrase")
            return f"{what} in the {parts[min(buf.count(b' ', 0, pos), 2)]}"
        colon = buf.find(b":", line_start, pos)
        if colon < 0:
            return f"{what} in a header name"
        name = bytes(buf[line_start:colon]).decode("latin-1")
        return f"{what} in the value of header {name[:64]!r}"

    def _too_large(self, message: str, status: int = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) -> Exception:
        return self._error(message, status)

    def _invalid(self, message: str) -> Exception:
        return self._error(message, HTTPStatus.BAD_REQUEST)


def upgrades_to_websocket(headers: Headers) -> bool:
    """Whether a request or response says ``Upgrade: websocket``."""
    return "websocket" in headers.tokens("Upgrade")


def parse_request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise InvalidRequest(f"malformed request line {line[:64]!r}")
    method, target, version = parts
    if not method or not method.isascii() or not _TOKEN_CHARS.issuperset(method.encode()):
        raise InvalidRequest(f"malformed method {method[:16]!r}")
    if not target.isprintable():  # HTAB: the other controls never get past HeadReader
        bad = next(c for c in target if not c.isprintable())
        raise InvalidRequest(f"control character 0x{ord(bad):02X} in the request target")
    if version != "HTTP/1.1":
        raise InvalidRequest(f"unsupported HTTP version {version[:16]!r}: WebSocket needs HTTP/1.1")
    return method, target, version


OriginsType = Sequence[str | None] | Callable[[str | None], bool] | None
SelectSubprotocol = Callable[[Request, list[str]], str | None]


class ServerHandshake:
    """The server's half of the opening handshake.

    ``origins``: allowed Origin values (None in the list admits requests with no
    Origin header), or a predicate, or None for no check. ``subprotocols``: the
    ones this server speaks, in order of preference. ``extension`` negotiates
    permessage-deflate when given (an object with ``negotiate(offers)``).
    """

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] = (),
        select_subprotocol: SelectSubprotocol | None = None,
        origins: OriginsType = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        server_header: str | None = None,
        extension_factory: Callable[[list[str]], tuple[str | None, object]] | None = None,
    ) -> None:
        self.subprotocols = list(subprotocols)
        self.select_subprotocol = select_subprotocol
        self.origins = origins
        self.extra_headers = list(extra_headers)
        self.server_header = server_header
        self.extension_factory = extension_factory

    def parse(self, start_line: str, headers: Headers) -> Request:
        """The request, or InvalidRequest for a head that is not even HTTP/1.1 GET.

        Another method is 400 on an upgrade request (RFC 6455 requires GET) and
        405 with ``Allow: GET`` on a plain HTTP request: nothing here serves it.
        """
        method, target, version = parse_request_line(start_line)
        if method != "GET":
            if upgrades_to_websocket(headers):
                raise InvalidRequest(f"method {method[:16]} not allowed: a WebSocket upgrade is a GET")
            raise InvalidRequest(
                f"method {method[:16]} not allowed: only GET is served", HTTPStatus.METHOD_NOT_ALLOWED, [("Allow", "GET")]
            )
        return Request(method, target, headers, version)

    def accept(self, request: Request) -> tuple[bytes, str | None, object]:
        """Check an upgrade request. Returns (101 response, subprotocol, extension)."""
        headers = request.headers
        if not upgrades_to_websocket(headers):
            raise InvalidRequest(
                "not a WebSocket upgrade request (no 'Upgrade: websocket')",
                HTTPStatus.UPGRADE_REQUIRED,
                [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            )
        if "upgrade" not in headers.tokens("Connection"):
            raise InvalidRequest("missing 'Connection: Upgrade'")
        if "Host" not in headers:
            raise InvalidRequest("missing Host header")
        versions = headers.get_all("Sec-WebSocket-Version")
        if versions != ["13"]:
            raise InvalidRequest(
                f"unsupported Sec-WebSocket-Version {', '.join(versions) or '(none)'}: only 13 is supported",
                HTTPStatus.UPGRADE_REQUIRED,
                [("Sec-WebSocket-Version", "13")],
            )
        keys = headers.get_all("Sec-WebSocket-Key")
        if len(keys) != 1:
            raise InvalidRequest("missing Sec-WebSocket-Key" if not keys else "several Sec-WebSocket-Key headers")
        key = keys[0]
        try:
            raw = base64.b64decode(key.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raw = b""
        if len(raw) != 16:
            raise InvalidRequest(f"malformed Sec-WebSocket-Key {key[:32]!r}: not 16 bytes in base64")
        self._check_origin(headers.get("Origin"))
        subprotocol = self._choose_subprotocol(request)
        extension_header, extension = None, None
        if self.extension_factory is not None:
            extension_header, extension = self.extension_factory(headers.get_all("Sec-WebSocket-Extensions"))
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key)}",
        ]
        if subprotocol is not None:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        if extension_header is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extension_header}")
        if self.server_header:
            lines.append(f"Server: {self.server_header}")
        lines += [f"{k}: {v}" for k, v in self.extra_headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), subprotocol, extension

    def _check_origin(self, origin: str | None) -> None:
        allowed = self.origins
        if allowed is None:
            return
        if callable(allowed):
            ok = allowed(origin)
        else:
            ok = origin in allowed
        if not ok:
            raise InvalidOrigin(origin)

    def _choose_subprotocol(self, request: Request) -> str | None:
        # Subprotocol names are case-sensitive: no tokens() here, it lower-cases.
        offered = [t.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for t in v.split(",") if t.strip()]
        if self.select_subprotocol is not None:
            chosen = self.select_subprotocol(request, offered)
            if chosen is not None and chosen not in offered:
                raise InvalidRequest(f"select_subprotocol chose {chosen!r}, which the client did not offer", 500)
            return chosen
        for name in self.subprotocols:
            if name in offered:
                return name
        return None


class ClientHandshake:
    """The client's half: builds the request and checks the answer."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        secure: bool = False,
        subprotocols: Sequence[str] = (),
        origin: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        user_agent: str | None = None,
        extension_offer: str | None = None,
    ) -> None:
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.subprotocols = list(subprotocols)
        self.extension_offer = extension_offer
        default_port = 443 if secure else 80
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        fields = [
            ("Host", host_header),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self.key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if self.subprotocols:
            fields.append(("Sec-WebSocket-Protocol", ", ".join(self.subprotocols)))
        if extension_offer:
            fields.append(("Sec-WebSocket-Extensions", extension_offer))
        if origin is not None:
            fields.append(("Origin", origin))
        if user_agent:
            fields.append(("User-Agent", user_agent))
        fields += extra_headers
        self.headers = Headers(fields)
        lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._reader = HeadReader(lambda message, status: InvalidResponse(message), "response")

    def receive_data(self, data: bytes) -> tuple[Response, bytes] | None:
        """Feed the server's bytes; (response, bytes after it) once it is complete and valid."""
        head = self._reader.feed(data)
        if head is None:
            return None
        start_line, headers, rest = head
        parts = start_line.split(" ", 2)
        if len(parts) < 2 or parts[0] != "HTTP/1.1" or not parts[1].isdigit():
            raise InvalidResponse(f"malformed status line {start_line[:64]!r}")
        status = int(parts[1])
        response = Response(status, headers, b"", parts[2] if len(parts) > 2 else "")
        if status != 101:
            raise InvalidResponse(f"server rejected the WebSocket connection: HTTP {status}", status)
        if not upgrades_to_websocket(headers):
            raise InvalidResponse("response lacks 'Upgrade: websocket'", status)
        if "upgrade" not in headers.tokens("Connection"):
            raise InvalidResponse("response lacks 'Connection: Upgrade'", status)
        if headers.get("Sec-WebSocket-Accept") != accept_key(self.key):
            raise InvalidResponse("wrong Sec-WebSocket-Accept", status)
        subprotocol = headers.get("Sec-WebSocket-Protocol")
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise InvalidResponse(f"server chose subprotocol {subprotocol!r}, which was not offered", status)
        if headers.get("Sec-WebSocket-Extensions") and not self.extension_offer:
            raise InvalidResponse("server accepted an extension that was not offered", status)
        return response, rest
