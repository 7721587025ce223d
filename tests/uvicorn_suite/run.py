"""uvicorn's own WebSocket test suite, run against fastws.uvicorn:WebSocketProtocol.

Downloads the sdist of the pinned uvicorn (below) into a temporary directory,
adds fastws's class to its ``ws_protocol_cls`` fixture, and runs
``tests/protocols/test_websocket.py`` for that class on every HTTP
implementation the fixture ``http_protocol_cls`` offers (httptools, h11, zttp):

    python tests/uvicorn_suite/run.py [--install] [pytest arguments...]

``--install`` first pip-installs the pinned uvicorn and what its tests import.
The tests that assert ``isinstance`` against uvicorn's own protocol classes
cannot pass for another class and are deselected (DESELECTED, named in the
README). Exits with pytest's status; the fastws under test is the installed one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

UVICORN = "0.55.0"
# What tests/protocols/test_websocket.py and tests/conftest.py import, beyond the test extra.
TEST_DEPENDENCIES = [f"uvicorn[standard]=={UVICORN}", "httpx2", "zttp>=0.0.34", "wsproto>=1.3", "trustme", "cryptography"]
FASTWS_PARAM = 'pytest.param("fastws.uvicorn:WebSocketProtocol", id="fastws"),\n'
# They check `isinstance(protocol, (_WSProtocol, WebSocketsSansIOProtocol))` first.
DESELECTED = ["test_server_keepalive_ping_pong", "test_server_keepalive_disabled"]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--install"]:
        argv = argv[1:]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *TEST_DEPENDENCIES], check=True)
    with tempfile.TemporaryDirectory(prefix="uvicorn-suite-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, f"uvicorn=={UVICORN}"],
            check=True,
        )
        with tarfile.open(Path(tmp) / f"uvicorn-{UVICORN}.tar.gz") as sdist:
            sdist.extractall(tmp, filter="data")
        root = Path(tmp) / f"uvicorn-{UVICORN}"
        # Import the installed uvicorn, not the sdist's copy: the sdist's uvicorn/ goes.
        os.rename(root / "uvicorn", root / "uvicorn-sources")
        conftest = root / "tests" / "conftest.py"
        text = conftest.read_text()
        anchor = re.search(r'( *)pytest\.param\(\s*"uvicorn\.protocols\.websockets\.websockets_sansio_impl:WebSocketsSansIOProtocol"', text)
        if anchor is None:
            print("run.py: the ws_protocol_cls fixture of uvicorn's conftest.py has changed; update this script", file=sys.stderr)
            return 2
        conftest.write_text(text[: anchor.start()] + anchor.group(1) + FASTWS_PARAM + text[anchor.start() :])
        deselect = " and ".join(f"not {name}" for name in DESELECTED)
        command = [
            sys.executable, "-m", "pytest", "tests/protocols/test_websocket.py",
            "-o", "addopts=-rxXs --strict-config --strict-markers",  # uvicorn's, less xdist's -n 8
            "-p", "no:cacheprovider",
            "-k", f"fastws and {deselect}",
            *argv,
        ]  # fmt: skip
        print("+", " ".join(command), flush=True)
        return subprocess.run(command, cwd=root).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
