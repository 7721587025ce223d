"""What the differential tests and the fuzzing checks share: a ProtocolCore of either
twin that records every callback, and feeding it the way each transport does.

Used by tests/test_differential.py and tests/fuzz/checks.py (which puts tests/ on
sys.path for it).
"""

from __future__ import annotations

from typing import Any


def recorder(mod: Any) -> type:
    """A subclass of ``mod.ProtocolCore`` whose callbacks append to ``self.log``."""

    class Recorder(mod.ProtocolCore):  # type: ignore[misc,name-defined]
        """Every callback of the core, in order, in ``self.log``."""

        def _on_ping(self, payload: bytes) -> None:
            self.log.append(("ping", type(payload).__name__, bytes(payload)))

        def _on_pong(self, payload: bytes) -> None:
            self.log.append(("pong", type(payload).__name__, bytes(payload)))

        def _on_close_frame(self, code: int, reason: str) -> None:
            self.log.append(("close frame", code, reason))

        def _close_transport(self) -> None:
            self.log.append(("close transport",))

        def _on_protocol_error(self, exc: Exception) -> None:
            self.log.append(("protocol error", type(exc).__name__, getattr(exc, "code", None), str(exc)))
            super()._on_protocol_error(exc)

    return Recorder


def feed_buffered(core: Any, chunk: bytes) -> None:
    """The compiled core's BufferedProtocol path: read into its buffer, then buffer_updated."""
    view = memoryview(chunk)
    while True:  # at least once: an empty chunk is fed too
        buf = core.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        core.buffer_updated(n)
        view = view[n:]
        if not view:
            return
