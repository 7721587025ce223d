"""picows echo / fan-out server (low-level WSListener API on uvloop).

picows uses aiofastnet for its transports by default when it is installed;
the INFO line records whether it is.
"""

from picows import WSListener, WSMsgType, ws_create_server

from common import MAX_SIZE, announce, lib_version, run_server, server_ssl

try:
    import aiofastnet
    HAS_AIOFASTNET = True
    # the direct OpenSSL engine (SSL_read/SSL_write from C) when not None
    AIOFASTNET_DIRECT_TLS = getattr(aiofastnet, "OPENSSL_DYN_LIBS", None) is not None
except ImportError:
    HAS_AIOFASTNET = False
    AIOFASTNET_DIRECT_TLS = None

fanout_members = set()


class Echo(WSListener):
    def on_ws_frame(self, transport, frame):
        t = frame.msg_type
        if t is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        # loadgen frames are never fragmented: echo frame by frame, keeping FIN
        if t is WSMsgType.BINARY or t is WSMsgType.TEXT or t is WSMsgType.CONTINUATION:
            transport.send(t, frame.get_payload_as_memoryview(), frame.fin)


class Fanout(WSListener):
    def on_ws_connected(self, transport):
        fanout_members.add(transport)

    def on_ws_disconnected(self, transport):
        fanout_members.discard(transport)

    def on_ws_frame(self, transport, frame):
        t = frame.msg_type
        if t is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if t is WSMsgType.BINARY or t is WSMsgType.TEXT:
            # picows has no pre-encoded broadcast frame: loop over the transports
            payload = frame.get_payload_as_bytes()
            for tr in fanout_members:
                tr.send(t, payload)


def listener_factory(request):
    if request.path == b"/fanout":  # picows keeps the path as bytes
        return Fanout()
    return Echo()


async def main(args, loop_name):
    server = await ws_create_server(listener_factory, args.host, args.port,
                                    max_frame_size=MAX_SIZE, enable_auto_ping=False, ssl=server_ssl(args))
    port = server.sockets[0].getsockname()[1]
    announce(port, library="picows", version=lib_version("picows"), loop=loop_name,
             aiofastnet=HAS_AIOFASTNET,
             aiofastnet_version=lib_version("aiofastnet") if HAS_AIOFASTNET else None,
             aiofastnet_direct_tls=AIOFASTNET_DIRECT_TLS)
    await server.serve_forever()


if __name__ == "__main__":
    run_server(main, __doc__)
