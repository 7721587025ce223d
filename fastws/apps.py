"""Built-in applications for the ``fastws serve`` command."""

from __future__ import annotations

from .connection import Connection, Listener

__all__ = ["EchoListener"]


class EchoListener(Listener):
    """Sends every message back with its type (text stays text, binary stays binary)."""

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        conn.send(data, is_text)
