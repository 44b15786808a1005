// API-1..API-3 of the interop matrix: the HTTP API's channel queries
// through the Node SDK, request signatures got wrong on purpose, and a
// mount prefix that a proxy leaves on the path (the PHP SDK's `path`).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as h from "./lib/harness.js";

const s = h.setup();

test("API-1 channels, channel and users queries answer Pusher's shapes", async () => {
  const [u1, u2] = [h.pusherClient(s.herald), h.pusherClient(s.herald, { user: h.USERS.u2 })];
  await Promise.all([
    h.subscribed(u1.subscribe("presence-api1")),
    h.subscribed(u2.subscribe("presence-api1")),
    h.subscribed(u1.subscribe("api1-public")),
  ]);
  const get = (path, params) => h.json(s.server.get({ path, params }));

  assert.deepEqual(await get("/channels", { filter_by_prefix: "presence-", info: "user_count" }), {
    channels: { "presence-api1": { user_count: 2 } },
  });
  assert.deepEqual(await get("/channels"), { channels: { "presence-api1": {}, "api1-public": {} } });
  assert.deepEqual(await get("/channels", { info: "subscription_count" }), {
    channels: { "presence-api1": { subscription_count: 2 }, "api1-public": { subscription_count: 1 } },
  });
  const empty = await h.apiRequest(s.herald, { path: "/apps/1/channels", params: { filter_by_prefix: "nothing-" } });
  assert.equal(empty.status, 200);
  assert.match(empty.text, /"channels":\{\}/, "an empty channel map is {} (the PHP SDK needs an object)");
  assert.equal(await h.statusOf(s.server.get({ path: "/channels", params: { info: "user_count" } })), 400);

  assert.deepEqual(await get("/channels/presence-api1", { info: "user_count,subscription_count" }), {
    occupied: true,
    user_count: 2,
    subscription_count: 2,
  });
  assert.deepEqual(await get("/channels/api1-public", { info: "subscription_count" }), {
    occupied: true,
    subscription_count: 1,
  });
  assert.deepEqual(await get("/channels/api1-nobody"), { occupied: false });
  assert.equal(await h.statusOf(s.server.get({ path: "/channels/api1-public", params: { info: "user_count" } })), 400);

  const users = await get("/channels/presence-api1/users");
  assert.deepEqual(users.users.map((u) => u.id).sort(), ["u1", "u2"]);
  assert.deepEqual(await get("/channels/presence-api1-nobody/users"), { users: [] });
  assert.equal(await h.statusOf(s.server.get({ path: "/channels/api1-public/users" })), 400);
});

test("API-2 a wrong secret, stale timestamp, body_md5, app or tampered parameter is 401", async () => {
  const body = { name: "Signed", channels: ["api2"], data: "{}" };
  const post = { method: "POST", path: "/apps/1/events", body };
  const query = { path: "/apps/1/channels", params: { filter_by_prefix: "presence-", info: "user_count" } };
  const status = async (request) => (await h.apiRequest(s.herald, request)).status;

  // What is right passes, so that every 401 below is for its one mistake.
  assert.equal(await status(post), 200);
  assert.equal(await status(query), 200);
  assert.equal(await status({ ...query, skew: -500 }), 200, "within 600 s");
  assert.equal(await status({ path: "/apps/1/channels", bodyMd5: h.md5("") }), 200, "GET with the md5 of no body (Python SDK)");
  assert.equal(await status({ path: "/apps/2/channels", app: h.QUIET_APP }), 200);

  const wrong = {
    "wrong secret": { ...post, app: { ...h.APP, secret: "not-the-secret" } },
    "unknown key": { ...post, app: { ...h.APP, key: "no-such-key" } },
    "timestamp 601 s old": { ...post, skew: -601 },
    // herald may read its clock a second after the timestamp was taken.
    "timestamp 602 s ahead": { ...post, skew: 602 },
    "body_md5 of another body": { ...post, bodyMd5: h.md5("{}") },
    "the key of another app": { ...query, app: h.QUIET_APP },
    "a parameter changed after signing": { ...query, sendParams: { filter_by_prefix: "private-" } },
    "a parameter added after signing": { ...query, sendParams: { extra: "1" } },
    "another path signed": { ...query, signedPath: "/apps/1/channels/x" },
  };
  const statuses = {};
  for (const [mistake, request] of Object.entries(wrong)) statuses[mistake] = await status(request);
  assert.deepEqual(
    statuses,
    Object.fromEntries(Object.keys(wrong).map((mistake) => [mistake, 401])),
  );
});

test("API-3 a mount prefix on the path (signed without it), for the API and the WebSocket", async () => {
  const prefixed = await h.startHerald({ top: { pusher_path_prefix: "/herald" } });
  try {
    // pusher-js under the prefix: wsPath.
    const client = h.pusherClient(prefixed, { wsPath: "/herald" });
    const channel = client.subscribe("api3");
    await h.subscribed(channel);
    const got = [];
    channel.bind("Prefixed", (data) => got.push(data));

    // As the PHP SDK with `path` sends it: the URL has the prefix, the signature does not.
    const answer = await h.apiRequest(prefixed, {
      method: "POST",
      path: "/herald/apps/1/events",
      signedPath: "/apps/1/events",
      body: { name: "Prefixed", channel: "api3", data: JSON.stringify({ via: "prefix" }) },
    });
    assert.equal(answer.status, 200, answer.text);
    assert.deepEqual(answer.json, {});
    await h.waitFor(() => got.length === 1, "the event");
    assert.deepEqual(got, [{ via: "prefix" }]);

    const query = await h.apiRequest(prefixed, {
      path: "/herald/apps/1/channels/api3",
      signedPath: "/apps/1/channels/api3",
      params: { info: "subscription_count" },
    });
    assert.equal(query.status, 200, query.text);
    assert.deepEqual(query.json, { occupied: true, subscription_count: 1 });
  } finally {
    h.disconnectAll();
    prefixed.stop();
  }
});
