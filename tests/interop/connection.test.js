// WS-1..WS-5 of the interop matrix: connecting, liveness, refusals and bad
// frames, with pusher-js 8.6.0 (Node build) and raw `ws` clients.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as h from "./lib/harness.js";

// Short liveness timers so that WS-2 and WS-3 take seconds, not minutes.
const s = h.setup({ app: { activity_timeout_secs: 2, pong_timeout_secs: 2 } });

test("WS-1 connect: connection_established first, with string data and a N.N socket id", async () => {
  const raw = await h.RawSocket.open(s.herald);
  const first = raw.frames[0];
  assert.equal(first.event, "pusher:connection_established", first.raw);
  assert.equal(typeof first.data, "string", "data is a JSON string (Pysher json.loads it)");
  const data = JSON.parse(first.data);
  assert.match(data.socket_id, /^\d+\.\d+$/);
  assert.equal(data.activity_timeout, 2, "the app's activity_timeout_secs");
  raw.close();

  const client = h.pusherClient(s.herald);
  await h.waitState(client, "connected");
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
  assert.notEqual(client.connection.socket_id, data.socket_id);

  // Protocols 5, 6 and 7 are served alike; without `protocol`, 7; below 5, 4007.
  for (const query of ["protocol=5", "protocol=6&client=Pysher&version=1.0.8", "client=js"]) {
    const other = await h.RawSocket.open(s.herald, { path: `/app/${h.APP.key}?${query}` });
    assert.equal(other.frames[0].event, "pusher:connection_established", `${query}: ${other.frames[0].raw}`);
    await other.alive();
    other.close();
  }
  const old = await h.RawSocket.open(s.herald, { path: `/app/${h.APP.key}?protocol=4` });
  const error = await old.event("pusher:error");
  assert.equal(error.data.code, 4007, error.raw);
  await h.waitFor(() => old.closed, "the close after 4007");
  assert.equal(old.closed.code, 4007);
});

test("WS-2 activity: pusher-js pings after activity_timeout, herald pongs, the connection stays up", async () => {
  // `client` keeps pusher-js's own settings: it must take 2 s from herald's
  // handshake. `pinger` asks for 1 s, so that it is pusher-js that pings
  // first, every second, and each ping must be answered in time.
  const client = h.pusherClient(s.herald);
  const pinger = h.pusherClient(s.herald, { activityTimeout: 1000, pongTimeout: 3000 });
  const seen = [h.record(client), h.record(pinger)];
  await Promise.all([h.waitState(client, "connected"), h.waitState(pinger, "connected")]);
  assert.equal(client.connection.activityTimeout, 2000, "pusher-js took activity_timeout from the handshake");
  const ids = [client.connection.socket_id, pinger.connection.socket_id];
  for (const s of seen) s.states.length = 0;

  await h.holds(
    () => client.connection.state !== "connected" || pinger.connection.state !== "connected",
    () => `a client left connected: ${JSON.stringify(seen.map((s) => s.states))}`,
    10000,
  );
  assert.deepEqual([client.connection.socket_id, pinger.connection.socket_id], ids, "no reconnect");
  for (const s of seen) assert.deepEqual(s.states, [], "no state change after connected");

  const pings = seen[1].sent.filter((f) => f.event === "pusher:ping").length;
  const pongs = seen[1].received.filter((f) => f.event === "pusher:pong").length;
  assert.ok(pings >= 5, `pusher-js pinged ${pings} times in 10 s`);
  assert.ok(pongs >= pings - 1, `${pings} pings, ${pongs} pongs`);
  // Liveness traffic went one way or the other on the default client too.
  const traffic =
    seen[0].sent.filter((f) => f.event === "pusher:ping").length +
    seen[0].received.filter((f) => f.event === "pusher:ping").length;
  assert.ok(traffic >= 3, `default client: ${traffic} pings in 10 s`);
});

test("WS-3 a client that never answers: pusher:error 4201, then close 4201", async () => {
  const started = Date.now();
  // The `ws` package answers ping frames by itself unless told not to.
  const raw = await h.RawSocket.open(s.herald, { autoPong: false });
  const error = await raw.event("pusher:error", undefined, 9000);
  await h.waitFor(() => raw.closed, "the close", 3000);
  const elapsed = (raw.closed.at - started) / 1000;
  assert.equal(typeof error.data, "object", error.raw);
  assert.equal(error.data.code, 4201, error.raw);
  assert.equal(raw.closed.code, 4201);
  // activity_timeout (2) + pong_timeout (2), with slack either way.
  assert.ok(elapsed >= 3 && elapsed <= 7, `closed after ${elapsed} s`);
  assert.ok(raw.pings >= 1, "herald sent a WebSocket ping frame first");
  assert.ok(
    raw.frames.some((f) => f.event === "pusher:ping"),
    "and a pusher:ping event (for clients whose WebSocket hides ping frames)",
  );
});

test("WS-4 unknown key: error 4001, pusher-js gives up after exactly one attempt", async () => {
  const raw = await h.RawSocket.open(s.herald, { key: "no-such-key" });
  const error = await raw.event("pusher:error");
  assert.equal(error.data.code, 4001, error.raw);
  await h.waitFor(() => raw.closed, "the close");
  assert.equal(raw.closed.code, 4001);

  const proxy = await h.startProxy(s.herald);
  try {
    const client = h.pusherClient(
      { host: proxy.host, port: proxy.port },
      { app: { ...h.APP, key: "no-such-key" } },
    );
    const seen = h.record(client);
    await h.waitFor(
      () => ["disconnected", "failed"].includes(client.connection.state),
      () => `pusher-js to give up: ${JSON.stringify(seen.states)}`,
    );
    assert.ok(seen.errors.some((e) => h.errorCode(e) === 4001), JSON.stringify(seen.errors));
    // pusher-js retries 1 s after a close it may retry: wait longer than that.
    await h.holds(() => proxy.accepted > 1, () => `${proxy.accepted} connection attempts`, 2500);
    assert.equal(proxy.accepted, 1);
    assert.equal(seen.states.filter((s) => s === "connecting").length, 1, JSON.stringify(seen.states));
  } finally {
    await proxy.close();
  }
});

test("WS-5 bad frames (malformed JSON, binary, unknown pusher:foo, pusher_internal:x) keep the connection", async () => {
  const server = h.sdk(s.herald);
  const raw = await h.RawSocket.open(s.herald);
  const other = await h.RawSocket.open(s.herald);
  const channel = "private-ws5";
  for (const socket of [raw, other]) {
    const answer = await socket.subscribe(channel, server.authorizeChannel(socket.socketId, channel));
    assert.equal(answer.event, "pusher_internal:subscription_succeeded", answer.raw);
  }

  raw.send("{not json");
  const malformed = await raw.event("pusher:error");
  await raw.alive();

  raw.ws.send(Buffer.from([1, 2, 3]), { binary: true });
  await raw.alive();

  raw.send({ event: "pusher:foo", data: {} });
  await raw.alive();

  raw.send({ event: "pusher_internal:x", channel, data: { sneaky: true } });
  const internal = await raw.event("pusher:error");
  await raw.alive();
  // The other subscriber got nothing of it: a later event arrives alone.
  await server.trigger(channel, "after", { n: 1 });
  await other.event("after", channel);
  assert.ok(!other.frames.some((f) => f.event === "pusher_internal:x"), "pusher_internal:x was relayed");

  assert.equal(raw.closed, null, "the connection is open");
  for (const error of [malformed, internal, ...raw.frames.filter((f) => f.event === "pusher:error")]) {
    assert.equal(typeof error.data, "object", `pusher:error data is an object: ${error.raw}`);
    assert.ok("code" in error.data && typeof error.data.message === "string", error.raw);
  }
  raw.close();
  other.close();
});
