#!/usr/bin/env python3
"""What webhooks cost when users join presence channels.

Starts a release herald (memory or Redis engine, a Pusher app with or
without webhooks to a local receiver), then JOINS Pusher clients join
presence channels of PER_CHANNEL users each (Pusher's default member limit
is 100), each as a user of its own, signed as an app's auth endpoint signs.
Reports herald's CPU per join, redis-server's CPU and commands per join
(INFO commandstats), and the webhooks the receiver got. Run it with and
without webhooks in one session and compare:

    bench/webhook_cost.py --engine redis --webhooks on
    bench/webhook_cost.py --engine redis --webhooks off

Only the standard library; loopback only; every wait has a deadline.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY, SECRET = "bench-key", "bench-secret-0123456789"
DEADLINE = 120.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_calls(port):
    """Every command Redis ran so far (INFO commandstats)."""
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True, check=True
    ).stdout
    return sum(int(m) for m in re.findall(r"calls=(\d+)", out))


class Receiver(asyncio.Protocol):
    """Answers every webhook 204 and counts them."""

    count = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        Receiver.count += data.count(b"POST ")
        self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n" * data.count(b"POST "))


async def read_frame(reader):
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return head[0] & 0x0F, await reader.readexactly(length)


def client_frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x81])
    if length < 126:
        head += bytes([0x80 | length])
    else:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def join(addr, index, per_channel, held):
    """One client: connect, join presence-room-N as user INDEX, keep the socket."""
    host, port = addr
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /app/{KEY}?protocol=7 HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == 1:
            break
    socket_id = json.loads(json.loads(payload)["data"])["socket_id"]
    channel = f"presence-room-{index // per_channel}"
    channel_data = json.dumps({"user_id": str(index)})
    signature = hmac.new(SECRET.encode(), f"{socket_id}:{channel}:{channel_data}".encode(), hashlib.sha256)
    message = {"auth": f"{KEY}:{signature.hexdigest()}", "channel": channel, "channel_data": channel_data}
    writer.write(client_frame(json.dumps({"event": "pusher:subscribe", "data": message})))
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == 1 and b"subscription_succeeded" in payload:
            break
        if opcode == 1 and b"subscription_error" in payload:
            raise RuntimeError(payload.decode())
    held.append((reader, writer))


async def run(args):
    port, receiver_port = free_port(), free_port()
    loop = asyncio.get_running_loop()
    receiver = await loop.create_server(Receiver, "127.0.0.1", receiver_port)
    workdir = tempfile.mkdtemp(prefix="herald-webhook-cost-")
    redis = None
    redis_port = free_port()
    lines = [
        'api_key = "bench-api-key-0123456789"',
        'token_secret = "bench-token-secret-0123456789-0123456789"',
        f"max_channels_per_connection = 256",
    ]
    if args.engine == "redis":
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        lines += ['engine = "redis"', f'redis_url = "redis://127.0.0.1:{redis_port}"']
    lines += ["[[apps]]", 'id = "1"', f'key = "{KEY}"', f'secret = "{SECRET}"', f"presence_max_members = {args.per_channel}"]
    if args.webhooks == "on":
        lines.append(f'webhooks = [{{ url = "http://127.0.0.1:{receiver_port}/hook" }}]')
    config = pathlib.Path(workdir, "herald.toml")
    config.write_text("\n".join(lines) + "\n")
    herald = subprocess.Popen(
        [args.herald, "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while "listening" not in herald.stdout.readline():
            if time.monotonic() > deadline:
                raise RuntimeError("herald did not start")
        if redis:
            await asyncio.sleep(1.0)  # the engine connects; not measured
            calls_before = redis_calls(redis_port)
            redis_cpu_before = cpu_seconds(redis.pid)
        cpu_before = cpu_seconds(herald.pid)
        held = []
        started = time.monotonic()
        semaphore = asyncio.Semaphore(args.concurrency)

        async def one(index):
            async with semaphore:
                await join(("127.0.0.1", port), index, args.per_channel, held)

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.joins))), DEADLINE * 5)
        joined_in = time.monotonic() - started
        # What herald does for the joins, webhooks included: wait until the
        # receiver has every notice (channels occupied, then each member).
        expected = args.joins + args.joins // args.per_channel if args.webhooks == "on" else 0
        deadline = time.monotonic() + DEADLINE
        while Receiver.count < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        report = {
            "engine": args.engine,
            "webhooks": args.webhooks,
            "joins": args.joins,
            "per_channel": args.per_channel,
            "joined_in_s": round(joined_in, 2),
            "herald_cpu_us_per_join": round((cpu_seconds(herald.pid) - cpu_before) * 1e6 / args.joins, 1),
            "webhooks_received": Receiver.count,
            "webhooks_expected": expected,
        }
        if redis:
            report["redis_calls_per_join"] = round((redis_calls(redis_port) - calls_before) / args.joins, 2)
            report["redis_cpu_us_per_join"] = round((cpu_seconds(redis.pid) - redis_cpu_before) * 1e6 / args.joins, 1)
        print(json.dumps(report))
        for _, writer in held:
            writer.close()
    finally:
        herald.kill()
        if redis:
            redis.kill()
        receiver.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--herald", default=str(ROOT / "target" / "release" / "herald"))
    parser.add_argument("--engine", choices=["memory", "redis"], default="redis")
    parser.add_argument("--webhooks", choices=["on", "off"], default="on")
    parser.add_argument("--joins", type=int, default=10000)
    parser.add_argument("--per-channel", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
