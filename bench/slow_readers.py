#!/usr/bin/env python3
"""Holds N WebSocket connections to herald's /ws, each subscribed to CHANNEL, that never read again: slow consumers for bench/soak.sh. Exits when stdin closes, printing how many the server closed."""
import base64, os, socket, sys, json

def main():
    host, port = sys.argv[1].rsplit(":", 1)
    count, channel = int(sys.argv[2]), sys.argv[3]
    conns = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        payload = json.dumps({"op": "subscribe", "channel": channel}).encode()
        mask = os.urandom(4)
        frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        s.sendall(frame)
        conns.append(s)
    print(f"slow readers: {count} subscribed, not reading", flush=True)
    sys.stdin.read()
    closed = 0
    for s in conns:
        s.setblocking(False)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except ConnectionResetError:
            closed += 1
    print(f"slow readers: {closed} of {count} closed by the server", flush=True)

main()
