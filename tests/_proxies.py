"""Real proxies for the tests: pproxy (HTTP CONNECT, SOCKS4/5, with or without auth, over
TLS too) in a venv of its own, started on free loopback ports.

pproxy lives apart from the tests' venv: it would use uvloop if it found it, and
is no dependency of fastws. ``FASTWS_TEST_PPROXY_PYTHON`` names a Python that has
it (``.ci/run`` makes one); without it the first test that needs pproxy makes a
venv once under the temporary directory, and the tests skip if that fails (no
network). A configured Python that does not work is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _wsutil import scaled

PPROXY = "pproxy==2.7.9"
SERVE = Path(__file__).with_name("_pproxy_serve.py")


def pproxy_python() -> str:
    """A Python that can import pproxy; skips the test when none can be had."""
    configured = os.environ.get("FASTWS_TEST_PPROXY_PYTHON")
    if configured:
        subprocess.run([configured, "-c", "import pproxy"], check=True, timeout=scaled(60))
        return configured
    venv = Path(tempfile.gettempdir()) / f"fastws-test-pproxy-{sys.version_info[0]}.{sys.version_info[1]}"
    python = venv / "bin" / "python"
    ready = venv / "ready"
    with open(str(venv) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator at a time; the others wait and use it
        if not ready.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=scaled(120))
            install = subprocess.run([str(python), "-m", "pip", "install", "-q", PPROXY], capture_output=True, text=True, timeout=scaled(300))
            if install.returncode:
                pytest.skip(f"cannot install {PPROXY} (set FASTWS_TEST_PPROXY_PYTHON): {install.stderr.strip()[-300:]}")
            ready.touch()
    return str(python)


@dataclass
class Proxies:
    """pproxy servers in one process: their ports in the order asked, and what they logged.

    ``log()`` is what they logged since ``start_log()`` (a test's servers may get
    the port of an earlier test's, so each test reads only its own lines).
    """

    ports: list[int]
    log_path: Path
    _skip: int = 0

    def log(self) -> str:
        return "".join(self.log_path.read_text().splitlines(keepends=True)[self._skip :])

    def start_log(self) -> Proxies:
        self._skip = len(self.log_path.read_text().splitlines())
        return self


@contextlib.contextmanager
def pproxy(*uris: str, cert: str | None = None) -> Iterator[Proxies]:
    """pproxy serving ``uris`` (each ``scheme://127.0.0.1:0[#user:pass]``) until the block ends."""
    python = pproxy_python()
    with tempfile.TemporaryDirectory(prefix="fastws-pproxy-") as tmp:
        log = Path(tmp) / "log"
        log.touch()
        command = [python, str(SERVE), *uris, "--log", str(log)] + (["--cert", cert] if cert else [])
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None and process.stdin is not None
            ready, _, _ = select.select([process.stdout], [], [], scaled(60))
            line = process.stdout.readline() if ready else ""  # the ports, once every server listens
            if not line:
                raise RuntimeError(f"pproxy did not start: {command}")
            yield Proxies([int(port) for port in line.split()], log)
        finally:
            if process.stdin is not None:
                process.stdin.close()  # it ends at EOF
            try:
                process.wait(scaled(10))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
