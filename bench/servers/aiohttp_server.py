"""aiohttp echo / fan-out server (web.WebSocketResponse, compression off, on uvloop)."""
import asyncio

from aiohttp import WSMsgType, web

from common import MAX_SIZE, announce, lib_version, run_server, server_ssl

fanout_members = set()


async def echo(request):
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def fanout(request):
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE)
    await ws.prepare(request)
    fanout_members.add(ws)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                for peer in list(fanout_members):
                    await peer.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                for peer in list(fanout_members):
                    await peer.send_str(msg.data)
    finally:
        fanout_members.discard(ws)
    return ws


async def main(args, loop_name):
    app = web.Application(client_max_size=MAX_SIZE)
    app.router.add_get("/", echo)
    app.router.add_get("/fanout", fanout)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024, ssl_context=server_ssl(args))
    await site.start()
    port = runner.addresses[0][1]
    announce(port, library="aiohttp", version=lib_version("aiohttp"), loop=loop_name)
    await asyncio.Event().wait()


if __name__ == "__main__":
    run_server(main, __doc__)
