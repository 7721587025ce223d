"""websockets echo / fan-out server (asyncio API, compression off, on uvloop)."""

from websockets.asyncio.server import broadcast, serve

from common import MAX_SIZE, announce, lib_version, run_server, server_ssl

fanout_members = set()


async def handler(ws):
    if ws.request.path == "/fanout":
        fanout_members.add(ws)
        try:
            async for message in ws:
                broadcast(fanout_members, message)
        finally:
            fanout_members.discard(ws)
    else:
        async for message in ws:  # str for text, bytes for binary: sent back the same way
            await ws.send(message)


async def main(args, loop_name):
    try:
        from websockets import speedups  # noqa: F401
        speedups_on = True
    except ImportError:
        speedups_on = False
    async with serve(handler, args.host, args.port, compression=None, max_size=MAX_SIZE,
                     ping_interval=None, max_queue=None, ssl=server_ssl(args)) as server:
        port = server.sockets[0].getsockname()[1]
        announce(port, library="websockets", version=lib_version("websockets"), loop=loop_name,
                 speedups=speedups_on)
        await server.serve_forever()


if __name__ == "__main__":
    run_server(main, __doc__)
