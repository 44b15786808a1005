"""WH-1 of the interop matrix, Python half: herald's webhooks accepted by the
PyPI server SDK's validate_webhook (pusher 3.3.4), occupied then vacated
after the 3-second grace."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pusher

from conftest import APP, CONFIG, DEADLINE, Herald, RawSocket, wait_for


def receiver():
    """A webhook receiver on 127.0.0.1: (headers, names lower-cased; raw body) of each request."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def test_wh_1_python_sdk_validates_herald_webhooks():
    server, received = receiver()
    url = "http://127.0.0.1:%d/webhook" % server.server_address[1]
    herald = Herald(CONFIG + 'webhooks = [{ url = "%s", event_types = ["channel_occupied", "channel_vacated"] }]\n' % url)
    try:
        sdk = pusher.Pusher(
            app_id=APP["id"], key=APP["key"], secret=APP["secret"], ssl=False, host=herald.host, port=herald.port
        )
        socket = RawSocket(herald)
        socket.subscribe("orders")
        wait_for(lambda: len(received) >= 1, "channel_occupied")
        socket.close()
        wait_for(lambda: len(received) >= 2, "channel_vacated, after the grace", timeout=DEADLINE + 5)
        events = []
        for headers, body in received:
            assert headers["content-type"] == "application/json"
            webhook = sdk.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"], body)
            assert webhook is not None, body
            events.extend(webhook["events"])
        assert events == [
            {"name": "channel_occupied", "channel": "orders"},
            {"name": "channel_vacated", "channel": "orders"},
        ]
        forged = received[0][1].replace("occupied", "vacated")
        assert sdk.validate_webhook(APP["key"], received[0][0]["x-pusher-signature"], forged) is None
    finally:
        herald.stop()
        server.shutdown()
