"""Several server processes on one port, supervised.

The supervisor forks ``count`` workers; each one opens its own listening socket
with ``SO_REUSEPORT`` on the same port and the kernel spreads new connections
over them. A worker that dies is replaced. SIGTERM or SIGINT stops the workers
with SIGTERM (each closes its connections itself) and waits for them. SIGHUP is
passed on to every worker (which ignores it unless it handles it: fastws serve
reloads its TLS certificate).

The supervisor keeps a bound, non-listening ``SO_REUSEPORT`` socket on each
address: that turns port 0 into one real port for every worker, finds a port
already in use before any worker starts, and keeps the port reserved while
workers restart. A bound socket that does not listen gets no connections.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

__all__ = ["Supervisor", "WorkerStartError", "reserve_port", "WorkerTarget"]

logger = logging.getLogger("fastws.workers")

# target(port, report) -> exit status. It runs in the worker process, listens on
# ``port`` with SO_REUSEPORT, calls ``report(("ready", info))`` once it listens
# (or ``report(("error", message))`` before failing) and returns when stopped.
WorkerTarget = Callable[[int, Callable[[Any], None]], int]

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Passed on to every worker (fastws serve reloads its TLS certificate on it).
_RELOAD_SIGNAL = signal.SIGHUP
RESTART_DELAY = 1.0  # a worker that dies younger than this is restarted after this delay


class WorkerStartError(Exception):
    """The workers could not start; the message is one line for the user."""


def reserve_port(host: str | None, port: int) -> tuple[int, list[socket.socket]]:
    """Bind non-listening SO_REUSEPORT sockets on every address of ``host``; returns the port and them."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkerStartError("several workers need SO_REUSEPORT, which this platform lacks")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WorkerStartError(f"cannot resolve {host!r}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's create_server does
            try:
                sock.bind((address[0], port, *address[2:]))
            except OSError as exc:
                raise WorkerStartError(f"cannot listen on {address[0]}:{port}: {exc.strerror or exc}") from None
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return port, sockets


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    reports: multiprocessing.connection.Connection | None  # None once the worker closed its end
    started: float
    slot: int  # its slot in the exporter's shared memory, reused by its replacement


class Supervisor:
    """Runs ``count`` copies of ``target`` in forked processes until SIGTERM or SIGINT."""

    def __init__(
        self, target: WorkerTarget, count: int, *, stop_timeout: float = 20.0, start_timeout: float = 30.0, exporter: Any = None
    ) -> None:
        if "fork" not in multiprocessing.get_all_start_methods():
            raise WorkerStartError("several workers need fork(), which this platform lacks")
        self.target = target
        self.count = count
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.port = 0
        self._context = multiprocessing.get_context("fork")
        self._workers: dict[int, _Worker] = {}  # by sentinel
        self._restarts: list[float] = []  # when each pending replacement is due
        self._stopping = False
        self._reload = False  # SIGHUP came: pass it on
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._reserved: list[socket.socket] = []
        # fastws.metrics.MetricsExporter (--metrics): each worker publishes into a slot of it.
        self.exporter = exporter

    def run(self, host: str | None, port: int, on_started: Callable[[int, list[Any]], None]) -> int:
        """Start the workers, call ``on_started(port, infos)`` once all listen, supervise; 0 after a clean stop.

        Raises WorkerStartError when a worker cannot start.
        """
        self.port, self._reserved = reserve_port(host, port)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(self._wake_writer.fileno())
        previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (*_STOP_SIGNALS, _RELOAD_SIGNAL)}
        try:
            infos = self._start_all()
            if infos is not None:
                on_started(self.port, infos)
                self._supervise()
        finally:
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            for sock in (*self._reserved, self._wake_reader, self._wake_writer):
                sock.close()
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == _RELOAD_SIGNAL:
            self._reload = True
        else:
            self._stopping = True

    def _spawn(self) -> _Worker:
        reports, report_end = self._context.Pipe(duplex=False)
        slot = min(set(range(self.count)) - {w.slot for w in self._workers.values()})
        process = self._context.Process(target=self._worker_main, args=(report_end, slot), name="fastws-worker")
        # Blocked across fork(): a stop signal reaches the child once its own handlers are in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, {*_STOP_SIGNALS, _RELOAD_SIGNAL})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {*_STOP_SIGNALS, _RELOAD_SIGNAL})
        report_end.close()  # the worker holds the only writing end: EOF means it is gone
        worker = _Worker(process, reports, time.monotonic(), slot)
        self._workers[process.sentinel] = worker
        if self.exporter is not None:
            self.exporter.workers = len(self._workers)
        return worker

    def _worker_main(self, report_end: multiprocessing.connection.Connection, slot: int) -> None:
        """In the forked worker: drop the supervisor's signal set-up, run the target."""
        signal.set_wakeup_fd(-1)
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(_RELOAD_SIGNAL, signal.SIG_IGN)  # until the worker's own handler (if it has one)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*_STOP_SIGNALS, _RELOAD_SIGNAL})
        for sock in (*self._reserved, self._wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()
        for worker in self._workers.values():  # the other workers' pipes
            if worker.reports is not None:
                worker.reports.close()
        if self.exporter is not None:
            self.exporter.in_worker(slot)
        try:
            status = self.target(self.port, report_end.send)
        finally:
            report_end.close()
        sys.stdout.flush()
        sys.exit(status)

    def _start_all(self) -> list[Any] | None:
        """Start the workers and wait until each reports; None if a signal came first."""
        assert self._wake_reader is not None  # run() made it
        waiting = {id(w.reports): w for w in (self._spawn() for _ in range(self.count))}
        infos: list[Any] = []
        deadline = time.monotonic() + self.start_timeout
        while waiting:
            if self._stopping:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerStartError(f"the workers did not start within {self.start_timeout:g} s")
            pipes = [w.reports for w in waiting.values() if w.reports is not None]
            for ready in multiprocessing.connection.wait([*pipes, self._wake_reader], remaining):
                if ready is self._wake_reader:
                    self._drain_wakeups()
                    continue
                worker = waiting.pop(id(ready))
                kind, value = self._read_report(worker)
                if kind == "ready":
                    infos.append(value)
                elif kind == "error":
                    raise WorkerStartError(value)
                else:
                    worker.process.join()
                    raise WorkerStartError(f"worker {worker.process.pid} exited with status {worker.process.exitcode} while starting")
        return infos

    def _read_report(self, worker: _Worker) -> tuple[str, Any]:
        """The worker's next report, or ("gone", None) at EOF."""
        assert worker.reports is not None
        try:
            report: tuple[str, Any] = worker.reports.recv()  # what _worker_main's target sent
            return report
        except (EOFError, OSError):
            worker.reports.close()
            worker.reports = None
            return "gone", None

    def _supervise(self) -> None:
        assert self._wake_reader is not None  # run() made it
        while not self._stopping:
            timeout = max(0.0, min(self._restarts) - time.monotonic()) if self._restarts else None
            pipes = [w.reports for w in self._workers.values() if w.reports is not None]
            ready = multiprocessing.connection.wait([*self._workers, *pipes, self._wake_reader], timeout)
            # Reports first: a dead worker's pipe may still hold its last words.
            for item in ready:
                if item is self._wake_reader:
                    self._drain_wakeups()
                elif not isinstance(item, int):
                    self._log_report(item)
            for item in ready:
                if isinstance(item, int):
                    self._reap(self._workers.pop(item))
            if self._stopping:
                return
            if self._reload:
                self._reload = False
                for worker in self._workers.values():
                    _signal(worker.process, _RELOAD_SIGNAL)
            now = time.monotonic()
            due = [t for t in self._restarts if t <= now]
            self._restarts = [t for t in self._restarts if t > now]
            for _ in due:
                worker = self._spawn()
                logger.info("started worker %d", worker.process.pid)

    def _log_report(self, pipe: Any) -> None:
        worker = next(w for w in self._workers.values() if w.reports is pipe)
        kind, value = self._read_report(worker)
        if kind == "error":
            logger.error("worker %d: %s", worker.process.pid, value)

    def _reap(self, worker: _Worker) -> None:
        worker.process.join()
        if worker.reports is not None:
            worker.reports.close()
        if self.exporter is not None:
            self.exporter.retire(worker.slot)  # its last counts stay in the sums
            self.exporter.workers = len(self._workers)
            if not self._stopping:
                self.exporter.worker_restarts += 1
        if self._stopping:
            return
        lived = time.monotonic() - worker.started
        delay = 0.0 if lived >= RESTART_DELAY else RESTART_DELAY
        logger.warning(
            "worker %d exited with status %s; replacing it%s",
            worker.process.pid, worker.process.exitcode, f" in {delay:g} s" if delay else "",
        )
        self._restarts.append(time.monotonic() + delay)

    def _drain_wakeups(self) -> None:
        assert self._wake_reader is not None
        try:
            while self._wake_reader.recv(512):
                pass
        except BlockingIOError:
            pass

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait ``stop_timeout`` for them, then SIGKILL the rest."""
        alive = [w.process for w in self._workers.values() if w.process.is_alive()]
        if alive:
            logger.info("stopping %d workers", len(alive))
        for process in alive:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("worker %d did not stop within %g s; killing it", process.pid, self.stop_timeout)
                _signal(process, signal.SIGKILL)
                process.join()
        for worker in self._workers.values():
            if worker.reports is not None:
                worker.reports.close()
        self._workers.clear()


def _signal(process: multiprocessing.process.BaseProcess, sig: int) -> None:
    if process.pid is not None:
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            pass
