"""Counters of a server, the access log, and the Prometheus endpoint of ``fastws serve --metrics``.

Counting costs nothing on the hot path: each protocol core keeps its message
counters as plain integers (C integers on the compiled path), the connection
layer counts rare events (handshake failures, protocol errors, closes, write
pauses, keepalive round trips) into a ``ServerMetrics``, and the two are added
up only when someone asks (``Server.stats``): the counts of connections that
ended, folded in when they ended, plus a live sum over the open ones.

With ``--metrics``, every process writes its counters (as Prometheus samples,
JSON-encoded) into its own slot of a shared-memory block every
``PUBLISH_INTERVAL`` seconds and once more when it stops; the process that
serves ``/metrics`` adds up the slots, plus what the workers that ended had
counted last, so a restart never makes a counter go backwards. A scrape is at
most ``PUBLISH_INTERVAL`` seconds behind the workers (a worker killed outright
loses what it counted since its last write).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import operator
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from . import _accel
from ._rules import COUNTERS

if TYPE_CHECKING:
    from .connection import Connection
    from .server import Server

__all__ = [
    "ServerMetrics",
    "PING_RTT_BUCKETS",
    "samples",
    "render",
    "SharedSlots",
    "MetricsExporter",
    "JsonFormatter",
    "access_logger",
]

access_logger = logging.getLogger("fastws.access")

PUBLISH_INTERVAL = 1.0  # seconds between a process's writes into its slot: the staleness bound of a scrape
PING_RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TYPES = ("text", "binary")

CORE_COUNTERS = COUNTERS  # the message counters of a protocol core (both twins), in ServerMetrics' order


_core_counters = operator.attrgetter(*CORE_COUNTERS)


def _add(counts: dict[int, int], key: int) -> None:
    counts[key] = counts.get(key, 0) + 1


class ServerMetrics:
    """The counters of one ``Server`` outside the cores; ``snapshot`` adds the cores' up.

    The connection layer calls the small methods below on rare events only.
    """

    def __init__(self) -> None:
        self.connections_total = 0
        self.closed: dict[int, int] = {}  # by close code (1006: no close frame)
        self.handshake_failures: dict[int, int] = {}  # by HTTP status
        self.protocol_errors: dict[int, int] = {}  # by the close code the error sent
        self.write_paused = 0
        self.ping_rtt_counts = [0] * (len(PING_RTT_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.ping_rtt_sum = 0.0
        self._ended = [0] * len(CORE_COUNTERS)  # the core counters of connections that ended

    def handshake_failed(self, status: int) -> None:
        _add(self.handshake_failures, status)

    def protocol_error(self, code: int) -> None:
        _add(self.protocol_errors, code)

    def ping_rtt(self, seconds: float) -> None:
        """A keepalive ping's pong came back after ``seconds``."""
        index = 0
        for bound in PING_RTT_BUCKETS:
            if seconds <= bound:
                break
            index += 1
        self.ping_rtt_counts[index] += 1
        self.ping_rtt_sum += seconds

    def connection_ended(self, conn: Connection, now: float) -> None:
        """Fold an ended connection's counters in, and write its access log line."""
        ended = self._ended
        counts = _core_counters(conn)
        for i, value in enumerate(counts):
            ended[i] += value
        code = conn.close_code or 1006
        _add(self.closed, code)
        if access_logger.isEnabledFor(logging.INFO):
            log_access(conn, now, counts, code)

    def snapshot(self, connections: Iterable[Connection], pubsub: Any = None) -> dict[str, Any]:
        """The counters as a dict (see ``Server.stats``)."""
        open_count, live = _accel.sum_counters(connections)
        totals = [ended + now for ended, now in zip(self._ended, live, strict=True)]
        if pubsub is not None:  # fan-out frames written as they are: the hub counted them
            fanout = pubsub.fanout
            totals[4] += fanout[0]
            totals[5] += fanout[1]
            totals[6] += fanout[2]
            totals[7] += fanout[3]
        cumulative = 0
        buckets: dict[float, int] = {}
        for bound, count in zip((*PING_RTT_BUCKETS, float("inf")), self.ping_rtt_counts, strict=True):
            cumulative += count
            buckets[bound] = cumulative
        stats: dict[str, Any] = {
            "connections_open": open_count,
            "connections_total": self.connections_total,
            "messages_received": dict(zip(TYPES, totals[0:2], strict=True)),
            "received_bytes": dict(zip(TYPES, totals[2:4], strict=True)),
            "messages_sent": dict(zip(TYPES, totals[4:6], strict=True)),
            "sent_bytes": dict(zip(TYPES, totals[6:8], strict=True)),
            "connections_closed": dict(self.closed),
            "handshake_failures": dict(self.handshake_failures),
            "protocol_errors": dict(self.protocol_errors),
            "write_paused": self.write_paused,
            "ping_rtt": {"buckets": buckets, "sum": self.ping_rtt_sum, "count": cumulative},
        }
        if pubsub is not None:
            broker = pubsub.broker
            stats["pubsub"] = dict(pubsub.stats, broker_connected=bool(getattr(broker, "connected", False)))
        return stats


# -- the access log -------------------------------------------------------------------------


def log_access(conn: Connection, now: float, counts: tuple[int, ...], code: int) -> None:
    """One line for a connection that ended, with its fields in ``record.access`` (for JSON)."""
    from .connection import _addr

    fields = {
        "peer": _addr(conn.remote_address),
        "path": conn.request.path,
        "duration": round(now - conn.opened_at, 6),
        "messages_in": counts[0] + counts[1],
        "bytes_in": counts[2] + counts[3],
        "messages_out": counts[4] + counts[5],
        "bytes_out": counts[6] + counts[7],
        "close_code": code,
        "closed_by": conn.closed_by or "nobody",
    }
    access_logger.info(
        '%s "%s" %.3fs in %d msgs %d B, out %d msgs %d B, close %d by %s',
        fields["peer"], fields["path"], fields["duration"], fields["messages_in"], fields["bytes_in"],
        fields["messages_out"], fields["bytes_out"], code, fields["closed_by"],
        extra={"access": fields},
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


# -- Prometheus samples ------------------------------------------------------------------------

# (family, type, help); samples are keyed by their text form, e.g. fastws_messages_sent_total{type="text"}.
FAMILIES = (
    ("fastws_connections_open", "gauge", "Open WebSocket connections."),
    ("fastws_connections_total", "counter", "WebSocket connections opened (handshakes accepted)."),
    ("fastws_handshake_failures_total", "counter", "Opening handshakes refused, by HTTP status."),
    ("fastws_messages_received_total", "counter", "Messages received, by type."),
    ("fastws_messages_sent_total", "counter", "Messages sent, by type (pub/sub deliveries included)."),
    ("fastws_received_bytes_total", "counter", "Payload bytes of the messages received (after decompression), by type."),
    ("fastws_sent_bytes_total", "counter", "Payload bytes of the messages sent (before compression), by type."),
    ("fastws_connections_closed_total", "counter", "Connections ended, by close code (1006: without a close frame)."),
    ("fastws_protocol_errors_total", "counter", "Connections failed for a protocol error of the peer, by close code."),
    ("fastws_write_paused_total", "counter", "Times a connection's write buffer went over its high-water mark."),
    ("fastws_ping_rtt_seconds", "histogram", "Round trip of keepalive pings."),
    ("fastws_pubsub_published_total", "counter", "pub/sub: local publish calls."),
    ("fastws_pubsub_delivered_total", "counter", "pub/sub: messages written to local subscribers."),
    ("fastws_pubsub_dropped_total", "counter", "pub/sub: messages not written to a slow subscriber."),
    ("fastws_pubsub_lost_total", "counter", "pub/sub: publishes that never reached the broker."),
    ("fastws_pubsub_broker_connected", "gauge", "pub/sub: processes connected to their broker."),
    ("fastws_workers", "gauge", "Server processes running."),
    ("fastws_worker_restarts_total", "counter", "Worker processes replaced after they died."),
)
GAUGES = frozenset(name for name, kind, _ in FAMILIES if kind == "gauge")


def _family(sample: str) -> str:
    name = sample.partition("{")[0]
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] == "fastws_ping_rtt_seconds":
            return "fastws_ping_rtt_seconds"
    return name


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def samples(stats: dict[str, Any]) -> dict[str, float]:
    """``Server.stats`` as Prometheus samples: {'name{labels}': value}."""
    out: dict[str, float] = {
        "fastws_connections_open": stats["connections_open"],
        "fastws_connections_total": stats["connections_total"],
        "fastws_write_paused_total": stats["write_paused"],
    }
    for key, family in (
        ("messages_received", "fastws_messages_received_total"),
        ("messages_sent", "fastws_messages_sent_total"),
        ("received_bytes", "fastws_received_bytes_total"),
        ("sent_bytes", "fastws_sent_bytes_total"),
    ):
        for kind, value in stats[key].items():
            out[f'{family}{{type="{kind}"}}'] = value
    for key, family, label in (
        ("connections_closed", "fastws_connections_closed_total", "code"),
        ("handshake_failures", "fastws_handshake_failures_total", "status"),
        ("protocol_errors", "fastws_protocol_errors_total", "code"),
    ):
        for value, count in stats[key].items():
            out[f'{family}{{{label}="{value}"}}'] = count
    rtt = stats["ping_rtt"]
    for bound, count in rtt["buckets"].items():
        out[f'fastws_ping_rtt_seconds_bucket{{le="{_le(bound)}"}}'] = count
    out["fastws_ping_rtt_seconds_sum"] = rtt["sum"]
    out["fastws_ping_rtt_seconds_count"] = rtt["count"]
    pubsub = stats.get("pubsub")
    if pubsub is not None:
        for key in ("published", "delivered", "dropped", "lost"):
            out[f"fastws_pubsub_{key}_total"] = pubsub[key]
        out["fastws_pubsub_broker_connected"] = 1 if pubsub["broker_connected"] else 0
    return out


def _value(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _sort_key(sample: str) -> tuple[str, float, str]:
    name, _, labels = sample.partition("{")
    value = labels.rpartition('="')[2].rstrip('"}')
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    return name, number, labels


def render(values: dict[str, float]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of ``values``."""
    by_family: dict[str, list[str]] = {}
    for sample in values:
        by_family.setdefault(_family(sample), []).append(sample)
    lines: list[str] = []
    for family, kind, help_text in FAMILIES:
        members = by_family.get(family)
        if not members:
            continue
        lines.append(f"# HELP {family} {help_text}")
        lines.append(f"# TYPE {family} {kind}")
        for sample in sorted(members, key=_sort_key):
            lines.append(f"{sample} {_value(values[sample])}")
    return "\n".join(lines) + "\n"


# -- shared memory: one slot per process ---------------------------------------------------------

_HEADER = struct.Struct("=QQQ")  # generation, length of half 0, length of half 1
HALF_SIZE = 256 * 1024  # anonymous shared memory: pages cost nothing until written


class SharedSlots:
    """A shared-memory block made before fork(): one slot of samples per process.

    Each slot is double-buffered: the writer fills the half that is not current,
    then bumps the generation (which names the current half). A reader retries
    when the generation moved while it read, and a writer killed mid-write
    leaves the last complete half current.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._slot_size = _HEADER.size + 2 * HALF_SIZE
        self._map = mmap.mmap(-1, slots * self._slot_size)  # MAP_SHARED | MAP_ANONYMOUS: the children see it

    def write(self, slot: int, values: dict[str, float]) -> None:
        data = json.dumps(values, separators=(",", ":")).encode()
        if len(data) > HALF_SIZE:  # thousands of distinct codes: keep the unlabelled samples
            data = json.dumps({k: v for k, v in values.items() if "{" not in k}).encode()
        base = slot * self._slot_size
        generation, len0, len1 = _HEADER.unpack_from(self._map, base)
        half = (generation + 1) & 1
        start = base + _HEADER.size + half * HALF_SIZE
        self._map[start : start + len(data)] = data
        lengths = (len(data), len1) if half == 0 else (len0, len(data))
        _HEADER.pack_into(self._map, base, generation, *lengths)
        _HEADER.pack_into(self._map, base, generation + 1, *lengths)

    def read(self, slot: int) -> dict[str, float]:
        base = slot * self._slot_size
        while True:
            generation, len0, len1 = _HEADER.unpack_from(self._map, base)
            if generation == 0:
                return {}
            half = generation & 1
            start = base + _HEADER.size + half * HALF_SIZE
            data = self._map[start : start + (len1 if half else len0)]
            if _HEADER.unpack_from(self._map, base)[0] == generation:
                values: dict[str, float] = json.loads(data)
                return values

    def clear(self, slot: int) -> None:
        _HEADER.pack_into(self._map, slot * self._slot_size, 0, 0, 0)


# -- the endpoint ----------------------------------------------------------------------------------

_bound: tuple[SharedSlots, int] | None = None  # in a process that publishes: its block and slot


class MetricsExporter:
    """``/metrics`` on its own address: the sum of every process's slot plus the retired counts.

    Made before the workers are forked (it binds the port, so a bad address
    fails at once); ``start`` serves it from a thread of the supervisor. The
    supervisor calls ``in_worker(slot)`` in each new worker, ``retire(slot)``
    when one ended, and keeps ``workers`` and ``worker_restarts`` up to date.
    """

    def __init__(self, host: str, port: int, slots: int) -> None:
        self.block = SharedSlots(slots)
        self.workers = 0
        self.worker_restarts = 0
        self._retired: dict[str, float] = {}
        self._lock = threading.Lock()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.partition("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.collect().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

        server_class = type("MetricsHTTPServer", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        self.httpd = server_class((host, port), Handler, bind_and_activate=False)
        self.httpd.daemon_threads = True
        try:
            self.httpd.server_bind()
            self.httpd.server_activate()
        except OSError:
            self.httpd.server_close()
            raise
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/metrics"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.2,), name="fastws-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()

    def in_worker(self, slot: int) -> None:
        """In a just-forked worker: drop the endpoint's socket, publish into ``slot``."""
        self.httpd.socket.close()
        bind_slot(self.block, slot)

    def retire(self, slot: int) -> None:
        """A worker ended: keep its last counters (gauges excepted), free its slot."""
        with self._lock:
            for sample, value in self.block.read(slot).items():
                if _family(sample) not in GAUGES:
                    self._retired[sample] = self._retired.get(sample, 0) + value
            self.block.clear(slot)

    def collect(self) -> str:
        """The exposition text of every process's counters, summed."""
        with self._lock:
            total = dict(self._retired)
            for slot in range(self.block.slots):
                for sample, value in self.block.read(slot).items():
                    total[sample] = total.get(sample, 0) + value
        total["fastws_workers"] = self.workers
        total["fastws_worker_restarts_total"] = self.worker_restarts
        return render(total)


def bind_slot(block: SharedSlots, slot: int) -> None:
    """This process publishes its server's counters into ``slot`` of ``block``."""
    global _bound
    _bound = (block, slot)


def start_publishing(server: Server) -> Callable[[], None] | None:
    """Write ``server``'s counters into this process's slot now and every PUBLISH_INTERVAL.

    Returns the function that stops it with a last write; None when this
    process has no slot (no ``--metrics``).
    """
    if _bound is None:
        return None
    block, slot = _bound
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def publish() -> None:
        nonlocal handle
        block.write(slot, samples(server.stats))
        handle = loop.call_later(PUBLISH_INTERVAL, publish)

    def stop() -> None:
        if handle is not None:
            handle.cancel()
        block.write(slot, samples(server.stats))

    publish()
    return stop
