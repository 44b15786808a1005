// PUB-1..PUB-4, ENC-1 and CACHE-1 of the interop matrix: the Node server
// SDK (pusher 5.3.4) publishing to pusher-js 8.6.0 and Laravel Echo 2.5.0.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as h from "./lib/harness.js";

const s = h.setup();


test("PUB-1 public channel: SDK trigger reaches pusher-js and Echo, data decoded once", async () => {
  const client = h.pusherClient(s.herald);
  const seen = h.record(client);
  const channel = client.subscribe("orders");
  // Laravel's way: Echo adds the App\Events namespace to a name without a dot.
  const laravel = h.echo(s.herald, s.auth, { broadcaster: "reverb" });
  const echoed = [];
  const echoChannel = laravel.channel("orders").listen("OrderShipped", (data) => echoed.push(data));
  await Promise.all([h.subscribed(channel), h.subscribed(echoChannel)]);
  const got = h.collect(channel, "OrderShipped");

  const order = { id: 1, items: [{ sku: "a-1", qty: 2 }], note: "ü € \"quoted\"", paid: true, total: 12.5 };
  const answer = await h.json(s.server.trigger("orders", "OrderShipped", order));
  assert.deepEqual(answer, {});
  await s.server.trigger("orders", "OrderShipped", "plain text");
  await s.server.trigger("orders", "App\\Events\\OrderShipped", order);
  await h.waitFor(() => got.length === 2 && echoed.length === 1, () => JSON.stringify({ got, echoed }));
  assert.deepEqual(got, [
    ["OrderShipped", order],
    ["OrderShipped", "plain text"],
  ]);
  assert.deepEqual(echoed, [order]);

  const succeeded = seen.received.find((f) => f.event === "pusher_internal:subscription_succeeded");
  assert.equal(typeof succeeded.data, "string", "subscription_succeeded data is a JSON string");
  assert.deepEqual(JSON.parse(succeeded.data), {});
  const frame = seen.received.find((f) => f.event === "OrderShipped");
  assert.equal(frame.channel, "orders");
  assert.equal(frame.data, JSON.stringify(order), "the API's data string, verbatim");
  assert.equal(typeof frame.herald_offset, "number", "herald numbers API events (recovery)");
});

test("PUB-2 trigger to 100 channels; 101 channels is 400; data over 10 KB is 413", async () => {
  const channels = Array.from({ length: 100 }, (_, i) => `pub2-${i}`);
  channels[1] = "pub2.a,b;c=d@e_f-1"; // every character a channel name may have
  const client = h.pusherClient(s.herald);
  const watched = [channels[0], channels[1], channels[99]].map((name) => client.subscribe(name));
  await Promise.all(watched.map(h.subscribed));
  const got = watched.map((channel) => h.collect(channel, "Fanned", "Big"));

  assert.deepEqual(await h.json(s.server.trigger(channels, "Fanned", { n: 1 })), {});
  await h.waitFor(() => got.every((g) => g.length === 1), () => JSON.stringify(got));
  for (const g of got) assert.deepEqual(g, [["Fanned", { n: 1 }]]);

  // With `info`, the attributes of each channel.
  const info = await h.json(s.server.trigger([channels[0], channels[99]], "Fanned", { n: 2 }, { info: "subscription_count" }));
  assert.deepEqual(info, {
    channels: { [channels[0]]: { subscription_count: 1 }, [channels[99]]: { subscription_count: 1 } },
  });

  // The SDK refuses 101 channels itself: send them signed, as another client could.
  const tooMany = [...channels, "pub2-100"];
  assert.equal(await h.statusOf(s.server.post({ path: "/events", body: { name: "x", data: "{}", channels: tooMany } })), 400);

  assert.deepEqual(await h.json(s.server.trigger("pub2-0", "Big", "x".repeat(10240))), {}, "10 KB exactly is fine");
  assert.equal(await h.statusOf(s.server.trigger("pub2-0", "Big", "x".repeat(10241))), 413);
  await h.waitFor(() => got[0].length === 3, () => JSON.stringify(got[0].map(([e, d]) => [e, String(d).length])));
  assert.equal(got[0][2][1].length, 10240, "the 10 KB event, and not the refused one");
});

test("PUB-3 socket_id excludes the sender's own connection", async () => {
  const [a, b] = [h.pusherClient(s.herald), h.pusherClient(s.herald)];
  const channels = [a.subscribe("pub3"), b.subscribe("pub3")];
  await Promise.all(channels.map(h.subscribed));
  const got = channels.map((channel) => h.collect(channel, "Excluded", "Marker"));

  await s.server.trigger("pub3", "Excluded", { from: "a" }, { socket_id: a.connection.socket_id });
  await s.server.trigger("pub3", "Marker", {});
  await h.waitFor(() => got[0].length >= 1 && got[1].length >= 2, () => JSON.stringify(got));
  assert.deepEqual(got[0], [["Marker", {}]], "the excluded socket got only the marker");
  assert.deepEqual(got[1], [
    ["Excluded", { from: "a" }],
    ["Marker", {}],
  ]);
  // An unknown socket id excludes nobody.
  await s.server.trigger("pub3", "Marker", { again: 1 }, { socket_id: "1.2" });
  await h.waitFor(() => got[0].length === 2 && got[1].length === 3, () => JSON.stringify(got));
});

test("PUB-4 triggerBatch: 10 events in order, 11 is 400, `info` answers per item", async () => {
  const client = h.pusherClient(s.herald, { user: h.USERS.u2 });
  const channel = client.subscribe("pub4");
  const presence = client.subscribe("presence-pub4");
  await Promise.all([h.subscribed(channel), h.subscribed(presence)]);
  const got = h.collect(channel, "Batched");

  const batch = Array.from({ length: 10 }, (_, n) => ({ channel: "pub4", name: "Batched", data: { n } }));
  assert.deepEqual(await h.json(s.server.triggerBatch(batch)), {});
  await h.waitFor(() => got.length === 10, () => JSON.stringify(got));
  assert.deepEqual(
    got.map(([, data]) => data.n),
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
  );

  const eleven = Array.from({ length: 11 }, (_, n) => ({ channel: "pub4", name: "Batched", data: { n } }));
  assert.equal(await h.statusOf(s.server.triggerBatch(eleven)), 400);

  const answer = await h.json(
    s.server.triggerBatch([
      { channel: "pub4", name: "Batched", data: { n: 10 }, info: "subscription_count" },
      { channel: "presence-pub4", name: "Batched", data: {}, info: "user_count,subscription_count" },
      { channel: "pub4", name: "Batched", data: { n: 11 } },
    ]),
  );
  assert.deepEqual(answer, {
    batch: [{ subscription_count: 1 }, { user_count: 1, subscription_count: 1 }, {}],
  });
  await h.waitFor(() => got.length === 12, () => JSON.stringify(got));
});

test("ENC-1 private-encrypted: herald relays ciphertext, pusher-js decrypts; multi-channel is 400", async () => {
  const client = h.pusherClient(s.herald);
  const seen = h.record(client);
  const channel = client.subscribe("private-encrypted-enc1");
  await h.subscribed(channel);
  const got = h.collect(channel, "Secret");

  const message = { text: "the eagle lands at 6", n: [1, 2, 3] };
  assert.deepEqual(await h.json(s.server.trigger("private-encrypted-enc1", "Secret", message)), {});
  await h.waitFor(() => got.length === 1, "the decrypted event");
  assert.deepEqual(got, [["Secret", message]]);
  const frame = seen.received.find((f) => f.event === "Secret");
  const payload = JSON.parse(frame.data);
  assert.deepEqual(Object.keys(payload).sort(), ["ciphertext", "nonce"]);
  assert.ok(!frame.data.includes("eagle"), "herald saw only ciphertext");

  // The SDK refuses an encrypted channel among several: signed and sent anyway, herald does too.
  const body = { name: "Secret", data: frame.data, channels: ["private-encrypted-enc1", "pub-enc1"] };
  assert.equal(await h.statusOf(s.server.post({ path: "/events", body })), 400);
});

test("CACHE-1 cache channels: the last event after subscribing, else pusher:cache_miss; info=cache", async () => {
  const names = ["cache-c1", "private-cache-c1", "presence-cache-c1"];
  for (const name of names) {
    await s.server.trigger(name, "Price", { v: 1 });
    await s.server.trigger(name, "Price", { v: 2 }); // the newest is kept
  }
  const client = h.pusherClient(s.herald);
  const seen = h.record(client);
  const channels = [...names, "cache-empty"].map((name) => client.subscribe(name));
  const got = channels.map((channel) => h.collect(channel, "Price", "pusher:cache_miss"));
  await Promise.all(channels.map(h.subscribed));
  await h.waitFor(() => got.every((g) => g.length >= 1), () => JSON.stringify(got));
  for (const g of got.slice(0, 3)) assert.deepEqual(g, [["Price", { v: 2 }]]);
  assert.equal(got[3].length, 1);
  assert.equal(got[3][0][0], "pusher:cache_miss");

  // On the wire: success first, then the cached event or the miss.
  for (const name of [...names, "cache-empty"]) {
    const frames = seen.received.filter((f) => f.channel === name && !f.event.startsWith("pusher_internal:herald"));
    assert.equal(frames[0].event, "pusher_internal:subscription_succeeded", name);
    assert.equal(frames[1].event, name === "cache-empty" ? "pusher:cache_miss" : "Price", name);
  }

  const info = await h.json(s.server.get({ path: "/channels/cache-c1", params: { info: "cache" } }));
  assert.equal(info.occupied, true);
  assert.equal(info.cache.data, JSON.stringify({ v: 2 }));
  assert.ok(Number.isInteger(info.cache.ttl) && info.cache.ttl > 0 && info.cache.ttl <= 1800, JSON.stringify(info));
});
