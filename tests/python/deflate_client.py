"""Python's `websockets` with permessage-deflate for tests/compression.rs.

    deflate_client.py ECHO_URL WS_URL CHANNEL [CA_FILE]

Opens ECHO_URL, sends one compressible JSON message and checks that it comes
back; then opens WS_URL, subscribes to CHANNEL and prints every message it
receives as one line. Before each, prints the handshake's
Sec-WebSocket-Extensions as {"extensions": ...}; errors as {"error": ...}.
websockets offers permessage-deflate by default and compresses every
message it sends.
"""

import asyncio
import json
import ssl
import sys

import websockets


def line(value):
    print(json.dumps(value), flush=True)


async def main(echo_url, ws_url, channel, ca_file=None):
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    options = {"ssl": context} if context else {}
    try:
        async with websockets.connect(echo_url, **options) as ws:
            line({"extensions": ws.response.headers.get("Sec-WebSocket-Extensions")})
            message = json.dumps({"items": [{"id": n, "text": "compressible"} for n in range(100)]})
            await ws.send(message)
            echoed = await ws.recv()
            line({"echoed": echoed == message, "length": len(message)})
        async with websockets.connect(ws_url, **options) as ws:
            line({"extensions": ws.response.headers.get("Sec-WebSocket-Extensions")})
            await ws.send(json.dumps({"op": "subscribe", "id": 1, "channel": channel}))
            async for message in ws:
                print(message, flush=True)
    except Exception as error:  # reported to the test, which fails on it
        line({"error": repr(error)})


asyncio.run(main(*sys.argv[1:5]))
