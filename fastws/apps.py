"""Built-in applications for the ``fastws serve`` command."""

from __future__ import annotations

from .connection import Connection, Listener

__all__ = ["EchoListener", "ChatListener"]


class EchoListener(Listener):
    """Sends every message back with its type (text stays text, binary stays binary)."""

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        conn.send(data, is_text)


class ChatListener(Listener):
    """A connection to path ``/ROOM`` joins room ROOM; each message goes to everyone in it, sender included.

    A room is a pub/sub topic of the server, so servers sharing a broker
    (``--broker redis://...``) form one chat.
    """

    room = ""

    def on_connect(self, conn: Connection) -> None:
        self.room = conn.request.path.split("?", 1)[0].lstrip("/")
        conn.subscribe(self.room)

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        conn.server.publish(self.room, data, is_text)
