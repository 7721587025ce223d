"""``fastws serve`` as a real process for tests: started, read line by line, always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from typing import IO, Any

import fastws
from _wsutil import scaled

STARTUP_TIMEOUT = scaled(30.0)
STOP_TIMEOUT = scaled(30.0)
# Where the fastws under test was imported from (site-packages, or a checkout on PYTHONPATH).
FASTWS_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastws.__file__)))
# Child processes start here: ``python -m`` puts its working directory first on
# sys.path, and from a checkout's root that would import the uncompiled sources.
NEUTRAL_CWD = tempfile.gettempdir()
STARTUP_LINE = re.compile(r"serving (\S+) on (wss?)://([^ ]+):(\d+)/")


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment, importing the same fastws as this process."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [FASTWS_PARENT, env.get("PYTHONPATH", "")] if p)
    return env


class ServeProcess:
    """``python -m fastws serve ARGS``; ``port`` is read from the startup line."""

    def __init__(self, *args: str, cwd: str | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastws", "serve", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), cwd=cwd or NEUTRAL_CWD,
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._stderr_grew = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._add_error_line), daemon=True).start()
        try:
            line = self.next_line(STARTUP_TIMEOUT)
            match = STARTUP_LINE.search(line or "")
            if match is None:
                self.proc.wait(STARTUP_TIMEOUT)
                raise AssertionError(f"no startup line, got {line!r}; stderr: {self.errors()[-3000:]}")
        except BaseException:
            self.kill()
            raise
        self.startup_line = line
        self.port = int(match.group(4))
        page_line = self.next_line()
        assert page_line is not None and page_line.startswith("browser client at "), page_line

    @staticmethod
    def _pump(stream: IO[str], sink: Any) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def next_line(self, timeout: float = STARTUP_TIMEOUT) -> str | None:
        """The next stdout line (None at EOF); AssertionError after ``timeout``."""
        try:
            return self.stdout.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; stderr: {self.errors()[-3000:]}") from None

    def _add_error_line(self, line: str | None) -> None:
        with self._stderr_grew:
            self.stderr.append(line)  # type: ignore[arg-type]  # None marks EOF
            self._stderr_grew.notify_all()

    def wait_for_error_output(self, text: str, timeout: float = STARTUP_TIMEOUT) -> None:
        """Block until ``text`` appears on stderr (the log); AssertionError after ``timeout``."""
        with self._stderr_grew:
            if not self._stderr_grew.wait_for(lambda: text in self.errors() or None in self.stderr, timeout):
                raise AssertionError(f"{text!r} not logged within {timeout} s: {self.errors()[-3000:]}")
            if text not in self.errors():
                raise AssertionError(f"the process ended without logging {text!r}: {self.errors()[-3000:]}")

    def errors(self) -> str:
        return "\n".join(line for line in self.stderr if line is not None)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait for it to exit by itself; its exit status."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"fastws serve did not exit after signal {sig}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Stop it gracefully if it still runs (its workers with it), else kill it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.asynccontextmanager
async def serving(*args: str, cwd: str | None = None) -> AsyncIterator[ServeProcess]:
    """A ServeProcess for async tests: started and stopped off the event loop, which stays free
    to run the test's clients (a closing handshake needs them)."""
    server = await asyncio.to_thread(ServeProcess, *args, cwd=cwd)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.__exit__)
