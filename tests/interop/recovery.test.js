// web/herald-pusher.js in Node, on pusher-js 8.6.0 and Laravel Echo 2.5.0
// as they are: after a cut connection, every channel resumes from its last
// event (herald's recovery extension), or says it could not. BR-1
// (browser.test.js) does the same in Chromium.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";
import * as h from "./lib/harness.js";

// A plain script that also sets module.exports: loaded as CommonJS.
const HeraldPusher = createRequire(import.meta.url)(path.join(h.ROOT, "web/herald-pusher.js"));

const s = h.setup({ proxy: true });

/** Cuts `proxy`, waits for `client` to notice, runs `meanwhile`, restores, waits for it to connect again. */
async function outage(proxy, client, meanwhile) {
  const socketId = client.connection.socket_id;
  proxy.cut();
  await h.waitFor(() => client.connection.state !== "connected", "the client to notice the cut");
  await meanwhile();
  proxy.restore();
  await h.waitFor(
    () => client.connection.state === "connected" && client.connection.socket_id !== socketId,
    () => `a new connection (state ${client.connection.state})`,
    20000,
  );
}

test("REC-1 pusher-js with herald-pusher.js gets what was published during a cut, once, in order", async () => {
  const client = h.pusherClient(s.proxy);
  const recovery = HeraldPusher.attach(client);
  const told = [];
  recovery.on("subscribed", (event) => told.push(event));
  const seen = h.record(client);
  // A stock client on the same channels sees nothing of the extension.
  const stock = h.pusherClient(s.herald);
  const stockEvents = [];
  const names = ["rec1", "private-rec1"];
  const channels = names.map((name) => client.subscribe(name));
  const stockChannels = names.map((name) => stock.subscribe(name));
  await Promise.all([...channels, ...stockChannels].map(h.subscribed));
  for (const channel of stockChannels) channel.bind_global((event, data) => stockEvents.push([event, data]));
  await h.waitFor(() => told.length === 2, "herald_subscribed for both channels");
  const got = channels.map((channel) => {
    const list = [];
    channel.bind("Seq", (data) => list.push(data.n));
    return list;
  });

  await s.server.trigger(names, "Seq", { n: 1 });
  await h.waitFor(() => got.every((g) => g.length === 1), "n=1");
  const before = recovery.positions();
  for (const name of names) {
    const start = told.find((t) => t.channel === name);
    assert.match(start.epoch, /^[0-9a-f]{8}$/);
    assert.deepEqual(before[name], { epoch: start.epoch, offset: start.offset + 1 }, name);
  }

  await outage(s.proxy, client, async () => {
    for (const n of [2, 3, 4]) await s.server.trigger(names, "Seq", { n });
  });
  await h.waitFor(() => got.every((g) => g.length >= 4), () => JSON.stringify(got));
  await s.server.trigger(names, "Seq", { n: 5 });
  await h.waitFor(() => got.every((g) => g.length >= 5), () => JSON.stringify(got));
  for (const g of got) assert.deepEqual(g, [1, 2, 3, 4, 5], "each once, in order");

  const resubscribes = seen.sent.filter((f) => f.event === "pusher:subscribe" && f.data.herald_since);
  for (const name of names) {
    const asked = resubscribes.find((f) => f.data.channel === name);
    assert.deepEqual(asked && asked.data.herald_since, before[name], `${name} resumed from its last event`);
    const resumed = told.filter((t) => t.channel === name).at(-1);
    assert.equal(resumed.recovered, true, JSON.stringify(resumed));
    assert.equal(resumed.missed, 3);
    assert.equal(recovery.positions()[name].offset, before[name].offset + 4);
  }
  assert.deepEqual(
    stockEvents.map(([event]) => event).filter((event) => event !== "Seq"),
    [],
    "a stock client sees only the app's events",
  );
});

test("REC-2 Echo: attach once, leaving a channel forgets it, detach restores pusher-js", async () => {
  const laravel = h.echo(s.proxy, s.auth);
  const recovery = HeraldPusher.attach(laravel);
  const pusher = laravel.connector.pusher;
  assert.equal(HeraldPusher.attach(pusher), recovery, "one handle per client");
  const seen = h.record(pusher);
  await h.subscribed(laravel.channel("rec2"));
  await h.waitFor(() => recovery.positions().rec2, "rec2's position");
  await s.server.trigger("rec2", "Seq", { n: 1 });
  await h.waitFor(() => recovery.positions().rec2.offset > 0, "the position to move");

  laravel.leaveChannel("rec2");
  assert.equal(recovery.positions().rec2, undefined);
  await h.subscribed(laravel.channel("rec2"));
  const subscribes = seen.sent.filter((f) => f.event === "pusher:subscribe" && f.data.channel === "rec2");
  assert.equal(subscribes.length, 2);
  assert.ok(subscribes.every((f) => f.data.herald_since === undefined), "a fresh start asks for nothing");

  recovery.detach();
  assert.ok(!Object.hasOwn(pusher, "send_event") && !Object.hasOwn(pusher, "unsubscribe"));
  assert.notEqual(HeraldPusher.attach(pusher), recovery, "detached: a new handle");
  assert.throws(() => HeraldPusher.attach({}), TypeError);
});

test("REC-3 a gap longer than the history: recovered false, nothing replayed, live events go on", async () => {
  const short = await h.startHerald({ app: { history_size: 2 } });
  const shortProxy = await h.startProxy(short);
  try {
    const client = h.pusherClient(shortProxy);
    const recovery = HeraldPusher.attach(client);
    const told = [];
    recovery.on("subscribed", (event) => told.push(event));
    const channel = client.subscribe("rec3");
    await h.subscribed(channel);
    const got = [];
    channel.bind("Seq", (data) => got.push(data.n));
    const shortServer = h.sdk(short);
    await shortServer.trigger("rec3", "Seq", { n: 1 });
    await h.waitFor(() => got.length === 1, "n=1");

    await outage(shortProxy, client, async () => {
      for (const n of [2, 3, 4, 5, 6]) await shortServer.trigger("rec3", "Seq", { n });
    });
    await h.waitFor(() => told.length === 2, "herald_subscribed after the reconnect");
    assert.equal(told[1].recovered, false, JSON.stringify(told));
    assert.equal(told[1].missed, 0);
    await shortServer.trigger("rec3", "Seq", { n: 7 });
    await h.waitFor(() => got.length >= 2, "n=7");
    assert.deepEqual(got, [1, 7]);
    assert.equal(recovery.positions().rec3.offset, told[1].offset + 1);
  } finally {
    h.disconnectAll();
    await shortProxy.close();
    short.stop();
  }
});
