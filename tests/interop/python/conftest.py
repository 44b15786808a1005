"""The Python half of herald's Pusher interop tests: a herald of their own,
the PyPI server SDK (pusher 3.3.4) pointed at it, and a raw WebSocket client
(websocket-client) for exact frame shapes. Everything binds 127.0.0.1; every
wait has a deadline."""

import json
import os
import pathlib
import struct
import subprocess
import tempfile
import threading
import time

import pusher
import pytest
import websocket

ROOT = pathlib.Path(__file__).resolve().parents[3]
HERALD_BIN = os.environ.get("HERALD_BIN", str(ROOT / "target" / "debug" / "herald"))
DEADLINE = 10.0
APP = {"id": "1", "key": "app-key", "secret": "app-secret-0123456789"}
CONFIG = """\
api_key = "interop-api-key-0123456789abcdef0123456789"
token_secret = "interop-token-secret-0123456789abcdef012345"

[[apps]]
id = "1"
key = "app-key"
secret = "app-secret-0123456789"
client_events = true
"""


def wait_for(condition, what, timeout=DEADLINE):
    """Returns the first truthy value of condition(), polled every 10 ms; fails past timeout."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, what() if callable(what) else what))
        time.sleep(0.01)


class Herald:
    """herald serve --config FILE --listen 127.0.0.1:0, ready once it prints its address."""

    def __init__(self, text=CONFIG):
        if not os.path.exists(HERALD_BIN):
            raise AssertionError("no herald binary at %s: run `cargo build` (or set HERALD_BIN)" % HERALD_BIN)
        self.dir = tempfile.TemporaryDirectory(prefix="herald-interop-")
        config = os.path.join(self.dir.name, "herald.toml")
        with open(config, "w") as f:
            f.write(text)
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.process = subprocess.Popen(
            [HERALD_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines = []
        self.errors = []
        for stream, into in ((self.process.stdout, self.lines), (self.process.stderr, self.errors)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

        def listening():
            if self.process.poll() is not None:
                raise AssertionError("herald exited %s: %s" % (self.process.returncode, "\n".join(self.errors)))
            for line in self.lines:
                if line.startswith("herald listening on "):
                    return line.split()[-1]
            return None

        self.addr = wait_for(listening, lambda: "herald's listening line; stderr:\n" + "\n".join(self.errors))
        self.host, port = self.addr.rsplit(":", 1)
        self.port = int(port)

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.dir.cleanup()


@pytest.fixture(scope="module")
def herald():
    server = Herald()
    yield server
    server.stop()


@pytest.fixture
def sdk(herald):
    """The PyPI server SDK, as a Python backend configures it for herald."""
    return pusher.Pusher(
        app_id=APP["id"], key=APP["key"], secret=APP["secret"], ssl=False, host=herald.host, port=herald.port
    )


class RawSocket:
    """A raw client of /app/{key}: every frame kept, parsed; the close code when it comes."""

    def __init__(self, herald, query="protocol=7&client=js&version=8.6.0&flash=false"):
        url = "ws://%s/app/%s?%s" % (herald.addr, APP["key"], query)
        self.ws = websocket.create_connection(url, timeout=DEADLINE)
        self.frames = []
        self.taken = set()
        self.close_code = None
        first = self.take(lambda f: True, "the first frame")
        assert first["event"] == "pusher:connection_established", first
        self.socket_id = json.loads(first["data"])["socket_id"]

    def send(self, frame):
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def _receive(self, end):
        self.ws.settimeout(max(0.01, end - time.monotonic()))
        try:
            opcode, data = self.ws.recv_data(control_frame=True)
        except websocket.WebSocketTimeoutException:
            return
        except websocket.WebSocketConnectionClosedException:
            if self.close_code is None:
                self.close_code = 1006
            return
        if opcode == websocket.ABNF.OPCODE_TEXT:
            self.frames.append(json.loads(data.decode()))
        elif opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005

    def take(self, predicate, what, timeout=DEADLINE):
        """Returns the next frame (not taken before) that matches predicate."""
        end = time.monotonic() + timeout
        while True:
            for i, frame in enumerate(self.frames):
                if i not in self.taken and predicate(frame):
                    self.taken.add(i)
                    return frame
            if time.monotonic() > end or self.close_code is not None:
                raise AssertionError("no %s; frames: %s; close %s" % (what, self.frames, self.close_code))
            self._receive(end)

    def event(self, name, channel=None, timeout=DEADLINE):
        return self.take(
            lambda f: f.get("event") == name and (channel is None or f.get("channel") == channel),
            "%s on %s" % (name, channel),
            timeout,
        )

    def subscribe(self, channel, **fields):
        self.send({"event": "pusher:subscribe", "data": dict(fields, channel=channel)})
        return self.take(
            lambda f: f.get("channel") == channel
            and f.get("event") in ("pusher_internal:subscription_succeeded", "pusher:subscription_error"),
            "the answer to subscribing %s" % channel,
        )

    def wait_closed(self, timeout=DEADLINE):
        end = time.monotonic() + timeout
        while self.close_code is None and time.monotonic() < end:
            self._receive(end)
        return self.close_code

    def close(self):
        self.ws.close()
