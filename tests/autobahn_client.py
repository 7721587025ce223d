"""Autobahn|Testsuite client driver on the public ``fastws.connect`` API.

Run by ``../shared/autobahn/test-client.sh``, which sets AUTOBAHN_URL and
AUTOBAHN_AGENT: for each case, echo every message back until the fuzzing
server closes the connection. Over wss:// the server's certificate is checked
against AUTOBAHN_CERT (its own self-signed certificate, as CI makes it).
"""

from __future__ import annotations

import os
import ssl
import sys

import fastws

URL = os.environ.get("AUTOBAHN_URL", "ws://127.0.0.1:9001")
AGENT = os.environ.get("AUTOBAHN_AGENT", "fastws")
MAX_SIZE = 2**25
CERT = os.environ.get("AUTOBAHN_CERT")
SSL = ssl.create_default_context(cafile=CERT) if URL.startswith("wss:") and CERT else None


async def run_case(index: int) -> None:
    try:
        url = f"{URL}/runCase?case={index}&agent={AGENT}"
        async with fastws.connect(url, max_size=MAX_SIZE, compression="deflate", ssl=SSL) as ws:
            async for message in ws:
                await ws.send(message)
    except fastws.ConnectionClosed:
        pass  # the case decides how the connection ends


async def main() -> int:
    async with fastws.connect(f"{URL}/getCaseCount", ssl=SSL) as ws:
        count = int(await ws.recv())
    print(f"{count} cases ({'compiled' if fastws.USING_EXTENSION else 'pure Python'}, {fastws.event_loop_name()}"
          f"{', TLS' if SSL else ''})")
    for index in range(1, count + 1):
        await run_case(index)
    async with fastws.connect(f"{URL}/updateReports?agent={AGENT}", ssl=SSL) as ws:
        await ws.wait_closed()
    return 0


if __name__ == "__main__":
    sys.exit(fastws.run(main()))
