"""The fuzz harnesses' inputs, replayed in the normal suite through the same checks.

Every file of ``tests/fuzz/corpus/<harness>/`` (the seeds) and of
``tests/fuzz/regressions/<harness>/`` (inputs that once crashed a harness) goes
through ``checks.CHECKS[harness]``, the function the atheris harness runs, so a
crash found by ``tests/fuzz/run.py`` stays fixed once its file is copied into
``regressions/``.

atheris is not needed here. Like tests/test_differential.py, the compiled
extension is: the frames check compares it with the pure-Python core.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

FUZZ_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
sys.path.insert(0, FUZZ_DIR)

import checks  # noqa: E402


def _files(kind: str) -> list[Any]:
    found = []
    for harness in checks.CHECKS:
        folder = os.path.join(FUZZ_DIR, kind, harness)
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if not name.startswith("."):
                    found.append(pytest.param(harness, os.path.join(folder, name), id=f"{harness}/{name}"))
    return found


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


SEEDS = _files("corpus")
REGRESSIONS = _files("regressions")


@pytest.mark.parametrize("harness, path", SEEDS + REGRESSIONS)
def test_replay(harness: str, path: str) -> None:
    checks.CHECKS[harness](_read(path))


def test_seed_corpus_exercises_every_path() -> None:
    """The seeds are not all rejected at the first byte: messages on both roles, compressed
    ones too, accepted handshakes on both sides, negotiated deflate."""
    seen: set[str] = set()
    for param in SEEDS:
        harness, path = param.values
        data = _read(path)
        if harness == "frames":
            options, chunks = checks.split_input(data)
            opts = checks.frames_options(options)
            for client in (False, True):
                log = checks.run_core("py", chunks, client, opts)
                if any(e[0] == "message" for e in log):
                    seen.add(f"message to {'client' if client else 'server'}{' compressed' if opts['extension'] else ''}")
                if any(e[0] == "protocol error" for e in log):
                    seen.add("protocol error")
                if any(e[0] == "close frame" for e in log):
                    seen.add("close frame")
        elif harness == "handshake":
            options, chunks = checks.split_input(data)
            if options & 1:
                hs = checks.ClientHandshake("example.com", 80, "/")
                hs.key = checks.RFC_KEY
                hs.extension_offer = "x"
                try:
                    if checks._feed(hs.receive_data, chunks) is not None:
                        seen.add("response accepted")
                except checks.InvalidResponse:
                    seen.add("response rejected")
            else:
                opening = checks.ServerOpening(checks._server_handshake((options >> 1) & 3))
                for chunk in chunks:
                    if opening.receive_data(chunk) != checks.READING:
                        break
                if opening.state == checks.ACCEPTED:
                    seen.add("request accepted")
                elif opening.state == checks.REFUSED:
                    seen.add("request rejected")
    expected = {
        "message to server", "message to client", "message to server compressed", "message to client compressed",
        "protocol error", "close frame",
        "response accepted", "response rejected", "request accepted", "request rejected",
    }
    assert expected <= seen, expected - seen


def test_frames_check_catches_a_twin_that_drops_pongs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The differential check has teeth: a compiled core that loses one callback is a Mismatch."""

    class Lossy(checks.RECORDERS["c"]):  # type: ignore[misc,valid-type]
        def _on_pong(self, payload: Any) -> None:
            pass

    monkeypatch.setitem(checks.RECORDERS, "c", Lossy)
    seed = _read(os.path.join(FUZZ_DIR, "corpus", "frames", "to-server-ping-pong"))
    with pytest.raises(checks.Mismatch, match="server cores differ"):
        checks.check_frames(seed)


def test_deflate_check_catches_an_answer_the_client_cannot_honour(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that asks a zlib client for an 8-bit window (the bug in regressions/deflate) is a Violation."""
    from fastws.extensions import permessage_deflate as pmd

    monkeypatch.setattr(pmd, "_MIN_DEFLATE_BITS", 8)  # the server's clamp, as it was before the fix
    monkeypatch.setattr(checks, "ClientDeflate", _StrictClient)
    with pytest.raises(checks.Violation, match="client_max_window_bits=8"):
        checks.check_deflate(_read(os.path.join(FUZZ_DIR, "regressions", "deflate", "peer-window-bits-8-4ffcf971")))


class _StrictClient(checks.ClientDeflate):
    """ClientDeflate, refusing 8-bit windows whatever the module constant says (as zlib does)."""

    def accept(self, values: list[str]) -> Any:
        if any("client_max_window_bits=8" in v for v in values):
            raise checks.InvalidResponse("client_max_window_bits=8 cannot be honoured", 101)
        return super().accept(values)
