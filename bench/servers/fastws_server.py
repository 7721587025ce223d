"""fastws echo / fan-out server (low-level Listener API, on uvloop).

The same script benchmarks both implementations: FASTWS_EXTENSION=1 (compiled
hot path) or FASTWS_EXTENSION=0 (pure Python), read by fastws at import time.
``/pubsub`` is the fan-out through a pub/sub topic (``server.publish``; ``/pubsub/NAME``
through topic NAME); with
FASTWS_BENCH_BROKER=redis://... the topic is shared with other processes.
"""
import os

import fastws
from common import MAX_SIZE, announce, lib_version, run_server, server_ssl

fanout_members = set()


class Handler(fastws.Listener):
    """Echo on any path, broadcast on /fanout (chosen once, at connect time)."""

    fanout = False
    topic = False

    def on_connect(self, conn):
        if conn.request.path == "/fanout":
            self.fanout = True
            fanout_members.add(conn)
        elif conn.request.path == "/pubsub" or conn.request.path.startswith("/pubsub/"):
            self.topic = conn.request.path[len("/pubsub/"):] or "fanout"  # /pubsub/NAME: topic NAME
            conn.subscribe(self.topic)

    def on_message(self, conn, data, is_text):
        if self.topic:
            conn.server.publish(self.topic, data, is_text)
        elif self.fanout:
            # the library's broadcast encodes the frame once for every receiver
            fastws.broadcast(fanout_members, data.decode() if is_text else data)
        else:
            conn.send(data, text=is_text)

    def on_close(self, conn, code, reason):
        if self.fanout:
            fanout_members.discard(conn)


async def main(args, loop_name):
    broker = os.environ.get("FASTWS_BENCH_BROKER") or None
    server = await fastws.create_server(Handler, args.host, args.port, max_size=MAX_SIZE, broker=broker,
                                        ssl=server_ssl(args))
    port = server.sockets[0].getsockname()[1]
    announce(port, library="fastws", version=lib_version("fastws"), loop=loop_name,
             extension=bool(getattr(fastws, "USING_EXTENSION", False)))
    await server.serve_forever()


if __name__ == "__main__":
    run_server(main, __doc__)
