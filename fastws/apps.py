"""Built-in applications for the ``fastws serve`` command."""

from __future__ import annotations

from .connection import Connection, Listener

__all__ = ["EchoListener", "ChatListener"]


class EchoListener(Listener):
    """Sends every message back with its type (text stays text, binary stays binary)."""

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        conn.send(data, is_text)


class ChatListener(Listener):
    """A connection to path ``/ROOM`` joins room ROOM; each message goes to everyone in it, sender included."""

    rooms: dict[str, set[Connection]] = {}

    def on_connect(self, conn: Connection) -> None:
        self.room = conn.request.path.split("?", 1)[0].lstrip("/")
        self.rooms.setdefault(self.room, set()).add(conn)

    def on_message(self, conn: Connection, data: bytes, is_text: bool) -> None:
        for member in list(self.rooms.get(self.room, ())):
            if member.state == 1:
                member.send(data, is_text)

    def on_close(self, conn: Connection, code: int, reason: str) -> None:
        members = self.rooms.get(self.room)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.rooms[self.room]
