#!/usr/bin/env python3
"""Kernel memory pinned by WebSocket subscribers that stop reading.

Starts a release herald (extra flags after --), opens N subscribers with a
4 KiB receive buffer that never read, publishes 16 KiB messages to their
channel through the server API, and samples the TCP memory the kernel
reports in /proc/net/sockstat until herald has closed every subscriber as a
slow consumer (4008). Prints the peak kernel memory per subscriber beside
herald's own bound (max_outbound_bytes).

    bench/kernel_memory.py [--subscribers 100] [-- --send-buffer-bytes 64KiB]
"""
import argparse, base64, json, os, re, socket, subprocess, sys, time

PAGE = os.sysconf("SC_PAGE_SIZE")


def tcp_mem_bytes():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                return int(re.search(r"mem (\d+)", line).group(1)) * PAGE
    raise RuntimeError("no TCP line in /proc/net/sockstat")


def masked_text(payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def subscriber(addr, channel):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(addr)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    s.sendall(masked_text(json.dumps({"op": "subscribe", "channel": channel}).encode()))
    return s


def read_answer(sock, buf):
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head.split(b" ")[1], rest[length:]


def metric(addr, name):
    s = socket.create_connection(addr)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    m = re.search(rb"\n" + re.escape(name.encode()) + rb" (\S+)", data)
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("herald_args", nargs="*")
    args = ap.parse_args()
    key = "bench-api-key-0123456789"
    herald = subprocess.Popen(
        ["./target/release/herald", "serve", "--dev", "--listen", "127.0.0.1:0", "--threads", "1",
         "--api-key", key, *args.herald_args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = herald.stdout.readline()
        while not line.startswith("herald listening on "):
            line = herald.stdout.readline()
        host, port = line.split()[-1].rsplit(":", 1)
        addr = (host, int(port))
        baseline = tcp_mem_bytes()
        subs = [subscriber(addr, "kmem") for _ in range(args.subscribers)]
        api = socket.create_connection(addr)
        body = json.dumps({"channel": "kmem", "data": "x" * 16000}).encode()
        request = (f"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {key}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        peak, published, rest = 0, 0, b""
        deadline = time.monotonic() + 60
        while metric(addr, 'herald_close_codes_sent_total{code="4008"}') < args.subscribers:
            if time.monotonic() > deadline:
                sys.exit("not every subscriber was closed within 60 s")
            for _ in range(4):
                api.sendall(request)
                status, rest = read_answer(api, rest)
                assert status == b"200", status
                published += 1
            peak = max(peak, tcp_mem_bytes() - baseline)
        per_client = peak / args.subscribers
        print(json.dumps({
            "herald_args": args.herald_args,
            "subscribers": args.subscribers,
            "published_16k_messages": published,
            "peak_kernel_tcp_bytes": peak,
            "kernel_bytes_per_subscriber": round(per_client),
        }))
        for s in subs:
            s.close()
    finally:
        herald.terminate()
        herald.wait()


if __name__ == "__main__":
    main()
