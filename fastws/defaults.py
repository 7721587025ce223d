"""The library's defaults, in one place.

Servers (``serve``, ``create_server``), clients (``connect``, ``create_connection``),
the sans-I/O protocol, ``Connection``, pub/sub and the command line take their
defaults from here; the README and the CLI's help texts quote them. Plain
constants: changing one here changes it everywhere.
"""

from __future__ import annotations

from typing import Final, Literal

from ._version import __version__

# -- messages and frames -------------------------------------------------------

#: Largest message in bytes, after decompression (1 MiB); None lifts the limit.
MAX_SIZE: Final = 2**20
#: Most frames in one message: Autobahn 9.3/9.4 send 65536 fragments.
MAX_FRAGMENTS: Final = 2**17

# -- the asyncio connection ----------------------------------------------------

#: High-water mark of a connection's write buffer in bytes; the low one is a quarter of it.
WRITE_LIMIT: Final = 2**16
#: Seconds for TCP, TLS and the opening handshake before the attempt is dropped.
OPEN_TIMEOUT: Final = 10.0
#: Seconds the peer gets to finish the closing handshake before TCP is aborted.
CLOSE_TIMEOUT: Final = 10.0
#: Seconds between keepalive pings (None: no keepalive).
PING_INTERVAL: Final = 20.0
#: Seconds to wait for any data (the pong at least) after a keepalive ping before failing with 1011.
PING_TIMEOUT: Final = 20.0
#: Messages the ``WebSocket`` API queues before it stops reading from the peer.
MAX_QUEUE: Final = 16

# -- the opening handshake -----------------------------------------------------

#: The ``Server`` header of a server's answers, and a client's ``User-Agent``.
SERVER_HEADER: Final = f"fastws/{__version__}"
USER_AGENT: Final = SERVER_HEADER
#: Longest start line or header line of an HTTP head, in bytes (414 or 431 past it).
MAX_LINE: Final = 8192
#: Most header fields in an HTTP head (431 past it).
MAX_HEADERS: Final = 128
#: Largest HTTP head in bytes (431 past it).
MAX_HEAD: Final = 65536

# -- pub/sub -------------------------------------------------------------------

#: Bytes of unsent output a subscriber may hold before ``SLOW_SUBSCRIBER`` applies.
SUBSCRIBER_BUFFER: Final = 2**20
#: What happens to a subscriber over its buffer: "drop" its new messages, or "close" it with 1013.
SLOW_SUBSCRIBER: Final[Literal["drop", "close"]] = "drop"

# -- reconnecting clients (``async for ws in connect(...)``) ---------------------

#: Seconds before the first retry; each failure multiplies it by BACKOFF_FACTOR, up to BACKOFF_MAX.
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 30.0
BACKOFF_FACTOR: Final = 2.0
