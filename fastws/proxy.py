"""Reaching a WebSocket server through a proxy: HTTP CONNECT (written here), SOCKS (python-socks).

Which proxy, if any (``proxy_for``): the ``proxy`` argument of ``connect`` and
``create_connection``, or with ``proxy=True`` (their default) the environment as
curl and websockets read it: ``https_proxy`` for ``wss://``, ``http_proxy`` for
``ws://``, else ``all_proxy`` (lower case first, then upper case), unless the
host matches ``no_proxy``.

The tunnel (``open_tunnel``) is a TCP connection to the proxy that now leads to
the server: a plain socket for SOCKS, an asyncio transport for HTTP CONNECT (TLS
to the proxy for ``https://`` proxies). ``run_over_tunnel`` then puts TLS to the
server on it for ``wss://`` and hands it to the handshake's protocol; a plaintext
``ws://`` connection through an ``http://`` or SOCKS proxy is a plain TCP
transport like a direct one, so it still moves onto fastws's own transport.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import ssl as ssl_module
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .exceptions import InvalidURI, ProxyError
from .handshake import HeadReader

__all__ = ["ProxyURL", "parse_proxy", "proxy_for", "bypasses_proxy", "HttpConnect", "open_tunnel", "run_over_tunnel"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080, "socks4": 1080, "socks4a": 1080}


@dataclass(frozen=True)
class ProxyURL:
    """A parsed proxy URL. ``scheme`` is one of http, https, socks5, socks5h, socks4, socks4a."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def socks(self) -> bool:
        return self.scheme.startswith("socks")

    def __str__(self) -> str:  # never the credentials: it goes into error messages and logs
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_proxy(url: str) -> ProxyURL:
    """Parse a proxy URL; ``host:port`` without a scheme means ``http://`` (as in curl). InvalidURI if unusable."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"proxy URL {_redact(url)!r} is not valid: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidURI(f"proxy URL {_redact(url)!r}: the scheme must be one of {', '.join(_DEFAULT_PORTS)}")
    if not parts.hostname:
        raise InvalidURI(f"proxy URL {_redact(url)!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidURI(f"proxy URL {_redact(url)!r} may not have a path, query or fragment")
    username = None if parts.username is None else urllib.parse.unquote(parts.username)
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    return ProxyURL(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], username, password)


def _redact(url: str) -> str:
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


def _environ(name: str) -> str | None:
    for key in (name.lower(), name.upper()):
        value = os.environ.get(key, "").strip()
        if value:
            return value
    return None


def proxy_for(secure: bool, host: str, port: int, proxy: str | bool | None) -> ProxyURL | None:
    """The proxy to reach ``host:port`` through, or None to connect directly.

    ``proxy`` is a URL, None or False (no proxy), or True: the environment's
    (``https_proxy`` or ``http_proxy`` by the URI's scheme, else ``all_proxy``),
    unless ``no_proxy`` names the host.
    """
    if proxy is None or proxy is False:
        return None
    if isinstance(proxy, str):
        return parse_proxy(proxy)
    if proxy is not True:
        raise TypeError(f"proxy must be a URL, True or None, not {proxy!r}")
    url = _environ("https_proxy" if secure else "http_proxy") or _environ("all_proxy")
    if url is None or bypasses_proxy(host, port, _environ("no_proxy") or ""):
        return None
    return parse_proxy(url)


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` (curl's syntax) names ``host:port``.

    Entries are separated by commas or spaces: ``*`` (everything), a domain
    (``example.com`` or ``.example.com``: it and its subdomains), an IP address,
    a network in CIDR notation (``10.0.0.0/8``), each optionally with ``:port``.
    """
    host = host.strip("[]").rstrip(".").lower()
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.replace(",", " ").split():
        entry = entry.lower()
        if entry == "*":
            return True
        entry_port: int | None = None
        if entry.startswith("["):  # [v6] or [v6]:port
            inside, _, after = entry[1:].partition("]")
            entry, entry_port = inside, _port(after[1:]) if after.startswith(":") else None
        elif entry.count(":") == 1:  # name:port or v4:port (a bare v6 address has several colons)
            entry, _, digits = entry.partition(":")
            entry_port = _port(digits)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.removeprefix("*").lstrip(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def _port(digits: str) -> int | None:
    return int(digits) if digits.isdigit() else None


# -- HTTP CONNECT ------------------------------------------------------------------------------


class HttpConnect:
    """The HTTP CONNECT exchange, sans-I/O: ``request`` to send, ``receive_data`` for the answer.

    The answer's head is read within the same limits as a WebSocket handshake's
    (``HeadReader``: CRLF lines, no control characters, bounded size). Any 2xx
    opens the tunnel (RFC 9110 9.3.6); anything else is a ``ProxyError`` with
    the status. Nothing may follow a 2xx head: the client speaks first in a
    WebSocket or TLS handshake, so such bytes cannot come from the server.
    """

    def __init__(self, proxy: ProxyURL, host: str, port: int, user_agent: str | None = None) -> None:
        self.proxy = proxy
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.target = authority
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if proxy.username is not None or proxy.password is not None:
            credentials = f"{proxy.username or ''}:{proxy.password or ''}".encode()  # RFC 7617: UTF-8
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(credentials).decode("ascii"))
        if user_agent:
            lines.append(f"User-Agent: {user_agent}")
        if any(c in line for line in lines for c in "\r\n\0"):
            raise InvalidURI(f"proxy request to {proxy} would carry a line break")
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        self._reader = HeadReader(lambda message, status: ProxyError(f"proxy {proxy} answered CONNECT badly: {message}"), "response")

    def receive_data(self, data: bytes) -> bool:
        """Feed the proxy's bytes: True once the tunnel is open, False while the head is incomplete."""
        head = self._reader.feed(data)
        if head is None:
            return False
        start_line, _, rest = head
        parts = start_line.split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise ProxyError(f"proxy {self.proxy} answered CONNECT with a malformed status line {start_line[:64]!r}")
        status = int(parts[1])
        if not 200 <= status < 300:
            raise ProxyError(self._refusal(status, parts[2] if len(parts) > 2 else ""), status)
        if rest:
            raise ProxyError(f"proxy {self.proxy} sent {len(rest)} bytes after its {status} answer, before the client spoke")
        return True

    def _refusal(self, status: int, reason: str) -> str:
        why = f"HTTP {status} {reason}".rstrip()
        if status == 407:
            has_credentials = self.proxy.username is not None or self.proxy.password is not None
            why += ": the credentials were refused" if has_credentials else ": it wants credentials (http://user:password@host:port)"
        return f"proxy {self.proxy} refused CONNECT to {self.target}: {why}"


class _ConnectProtocol(asyncio.Protocol):
    """The transport's protocol while CONNECT is under way; resolves ``done``."""

    def __init__(self, exchange: HttpConnect, done: asyncio.Future[None]) -> None:
        self.exchange = exchange
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.exchange.request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            if self.exchange.receive_data(data):
                assert self.transport is not None
                self.transport.pause_reading()  # until the next protocol takes over
                self.done.set_result(None)
        except ProxyError as exc:
            self.done.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            detail = f": {exc}" if exc else ""
            self.done.set_exception(ProxyError(f"proxy {self.exchange.proxy} closed the connection before opening the tunnel{detail}"))


# -- opening the tunnel ------------------------------------------------------------------------

#: What ``open_tunnel`` returns: a connected socket (SOCKS) or a transport (HTTP CONNECT).
Tunnel = socket.socket | asyncio.Transport


async def open_tunnel(
    proxy: ProxyURL,
    host: str,
    port: int,
    *,
    proxy_ssl: ssl_module.SSLContext | None = None,
    user_agent: str | None = None,
) -> Tunnel:
    """A connection through ``proxy`` to ``host:port``; raises ``ProxyError`` if the proxy fails us."""
    if proxy.socks:
        return await _socks_tunnel(proxy, host, port)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    exchange = HttpConnect(proxy, host, port, user_agent)
    kwargs: dict[str, Any] = {}
    if proxy.scheme == "https":
        kwargs["ssl"] = proxy_ssl or ssl_module.create_default_context()
        kwargs["server_hostname"] = proxy.host
    try:
        transport, _ = await loop.create_connection(lambda: _ConnectProtocol(exchange, done), proxy.host, proxy.port, **kwargs)
    except ssl_module.SSLCertVerificationError:
        raise  # an untrusted proxy certificate is not a network failure: let it be seen as such
    except OSError as exc:
        raise ProxyError(f"cannot reach proxy {proxy}: {exc.strerror or exc}") from exc
    try:
        await done
    except BaseException:
        transport.abort()
        raise
    return transport


async def _socks_tunnel(proxy: ProxyURL, host: str, port: int) -> socket.socket:
    try:
        import python_socks
        from python_socks.async_.asyncio import Proxy
    except ImportError:
        raise ImportError(f"{proxy.scheme}:// proxies need python-socks: pip install 'fastws[proxy]'") from None
    kind = python_socks.ProxyType.SOCKS5 if proxy.scheme.startswith("socks5") else python_socks.ProxyType.SOCKS4
    client = Proxy(
        kind,
        proxy.host,
        proxy.port,
        proxy.username,
        proxy.password,
        rdns=proxy.scheme in ("socks5h", "socks4a"),  # the proxy resolves the name
        loop=asyncio.get_running_loop(),
    )
    try:
        # The caller's open_timeout bounds it; python-socks' own timeout must not fire first.
        return await client.connect(host, port, timeout=_FOREVER)
    except python_socks.ProxyConnectionError as exc:
        raise ProxyError(f"cannot reach proxy {proxy}: {exc.__cause__ or exc}") from exc
    except python_socks.ProxyError as exc:
        raise ProxyError(f"proxy {proxy} refused the connection to {host}:{port}: {exc}") from exc


_FOREVER = 365 * 86400.0


async def run_over_tunnel(
    tunnel: Tunnel,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    ssl: ssl_module.SSLContext | None,
    server_hostname: str | None,
) -> asyncio.Transport:
    """Start ``protocol_factory()``'s protocol on the tunnel (after TLS to the server, given ``ssl``).

    The protocol's ``connection_made`` is called as on a new connection. The
    tunnel is closed if this fails.
    """
    loop = asyncio.get_running_loop()
    if isinstance(tunnel, socket.socket):
        try:
            transport, _ = await loop.create_connection(protocol_factory, sock=tunnel, ssl=ssl, server_hostname=server_hostname if ssl else None)
        except BaseException:
            tunnel.close()
            raise
        return transport
    protocol = protocol_factory()
    try:
        if ssl is not None:
            # Reading stays paused until start_tls has its own protocol in place.
            tls = await loop.start_tls(tunnel, protocol, ssl, server_hostname=server_hostname)
            if tls is None:  # only when the loop is closing
                raise ConnectionError("the event loop is closing")
            protocol.connection_made(tls)
            transport = tls
        else:
            tunnel.set_protocol(protocol)
            protocol.connection_made(tunnel)
            tunnel.resume_reading()  # paused since the proxy's answer
            transport = tunnel
    except BaseException:
        tunnel.abort()
        raise
    return transport
