// WH-1 of the interop matrix: herald's webhooks checked by the Node server
// SDK (pusher 5.3.4): `pusher.webhook({headers, rawBody}).isValid()` and its
// events, for occupied, member_added, client_event, member_removed and
// channel_vacated (after the 3-second grace), from pusher-js clients.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import * as h from "./lib/harness.js";

/** A webhook receiver: every request, its headers and raw body. */
async function receiver() {
  const requests = [];
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      requests.push({ headers: request.headers, rawBody: Buffer.concat(chunks).toString() });
      response.writeHead(200).end();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { requests, url: `http://127.0.0.1:${server.address().port}/pusher/webhook`, server };
}

const s = {};
before(async () => {
  s.receiver = await receiver();
  s.herald = await h.startHerald({
    text: [
      h.configToml(),
      "[[apps]]",
      'id = "3"',
      'key = "hooked-key"',
      'secret = "hooked-secret-0123456789"',
      "client_events = true",
      `webhooks = [{ url = "${s.receiver.url}" }]`,
    ].join("\n"),
  });
});
after(() => {
  h.disconnectAll();
  s.herald.stop();
  s.receiver.server.close();
});

const HOOKED = { id: "3", key: "hooked-key", secret: "hooked-secret-0123456789" };

test("WH-1 webhooks are valid for the Node SDK: occupied, members, client events, vacated", async () => {
  const sdk = h.sdk(s.herald, HOOKED);
  const a = h.pusherClient(s.herald, { app: HOOKED, user: h.USERS.u1 });
  const b = h.pusherClient(s.herald, { app: HOOKED, user: h.USERS.u2 });
  // One after the other: the order of the two member_added events is then
  // the order the test asserts, not the order two racing sockets arrive in.
  const channelA = a.subscribe("presence-room");
  await h.waitFor(() => channelA.subscribed, "u1 subscribed");
  const channelB = b.subscribe("presence-room");
  await h.waitFor(() => channelB.subscribed, "u2 subscribed");
  channelA.trigger("client-typing", { by: "u1" });
  const events = () => s.receiver.requests.flatMap((r) => sdk.webhook(r).getEvents());
  await h.waitFor(() => events().length >= 4, () => JSON.stringify(events()));
  a.disconnect();
  b.disconnect();
  await h.waitFor(() => events().length >= 7, () => JSON.stringify(events()), 15000);
  for (const request of s.receiver.requests) {
    const webhook = sdk.webhook(request);
    assert.ok(webhook.isValid(), JSON.stringify(request));
    assert.equal(request.headers["content-type"], "application/json");
    assert.ok(Math.abs(webhook.getTime().getTime() - Date.now()) < 60000);
  }
  const names = events().map((e) => `${e.name}:${e.user_id ?? ""}`);
  assert.deepEqual(names.slice(0, 3), ["channel_occupied:", "member_added:u1", "member_added:u2"]);
  assert.deepEqual(names.slice(3, 4), ["client_event:u1"]);
  assert.deepEqual(new Set(names.slice(4, 6)), new Set(["member_removed:u1", "member_removed:u2"]));
  assert.equal(names[6], "channel_vacated:");
  const client = events().find((e) => e.name === "client_event");
  assert.equal(client.channel, "presence-room");
  assert.equal(client.event, "client-typing");
  assert.deepEqual(JSON.parse(client.data), { by: "u1" });
  assert.match(client.socket_id, /^\d+\.\d+$/);
  // A body signed with another secret is not valid.
  const forged = { ...s.receiver.requests[0], rawBody: s.receiver.requests[0].rawBody.replace("occupied", "vacated") };
  assert.equal(sdk.webhook(forged).isValid(), false);
});
