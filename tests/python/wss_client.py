"""Python's `websockets` client over wss:// for tests/wss_clients.rs.

    wss_client.py URL CA_FILE CHANNEL

Trusts the CA in CA_FILE (and nothing else), opens URL, subscribes to
CHANNEL and prints every message it receives as one line; errors as
{"error": ...}.
"""

import asyncio
import json
import ssl
import sys

import websockets


async def main(url, ca_file, channel):
    context = ssl.create_default_context(cafile=ca_file)
    try:
        async with websockets.connect(url, ssl=context) as ws:
            tls = ws.transport.get_extra_info("ssl_object")
            print(json.dumps({"open": True, "protocol": tls.version()}), flush=True)
            await ws.send(json.dumps({"op": "subscribe", "id": 1, "channel": channel}))
            async for message in ws:
                print(message, flush=True)
    except Exception as error:  # reported to the test, which fails on it
        print(json.dumps({"error": repr(error)}), flush=True)


asyncio.run(main(*sys.argv[1:4]))
