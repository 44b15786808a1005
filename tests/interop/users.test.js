// USER-1 and USER-2 of the interop matrix: pusher:signin, server-to-user
// events (Node SDK sendToUser) and terminate_connections, with pusher-js
// 8.6.0 and Laravel Echo 2.5.0.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as h from "./lib/harness.js";

const s = h.setup();

/** Signs a pusher-js client in and waits until its user channel is subscribed. */
async function signIn(client) {
  client.signin();
  await h.waitFor(
    () => client.user.serverToUserChannel && client.user.serverToUserChannel.subscribed,
    "the sign-in and the user channel",
  );
}

test("USER-1 signin, then sendToUser reaches every socket of the user once", async () => {
  const first = h.pusherClient(s.herald);
  const second = h.pusherClient(s.herald);
  const laravel = h.echo(s.herald, s.auth, { user: "u1" });
  const viaEcho = laravel.connector.pusher;
  const other = h.pusherClient(s.herald, { user: h.USERS.u2 });
  const clients = [first, second, viaEcho, other];
  const seen = clients.map(h.record);
  await Promise.all(clients.map((client) => h.waitState(client, "connected")));
  const got = clients.map((client) => {
    const list = [];
    client.user.bind("Notice", (data) => list.push(data));
    return list;
  });
  await Promise.all([first, second, other].map(signIn));
  laravel.connector.signin();
  await h.waitFor(() => viaEcho.user.serverToUserChannel && viaEcho.user.serverToUserChannel.subscribed, "Echo's sign-in");
  assert.ok(s.auth.requests.some((r) => r.path === "/broadcasting/user-auth" && r.user === "u1"));

  // signin_success: data is an object holding the user_data string as sent.
  const sent = seen[0].sent.find((f) => f.event === "pusher:signin");
  const success = seen[0].received.find((f) => f.event === "pusher:signin_success");
  assert.equal(typeof success.data, "object", JSON.stringify(success));
  assert.equal(success.data.user_data, sent.data.user_data);
  assert.deepEqual(first.user.user_data, { id: "u1", user_info: { name: "Ada" } });

  assert.deepEqual(await h.json(s.server.sendToUser("u1", "Notice", { n: 1 })), {});
  await s.server.sendToUser("u1", "Notice", { n: 2 });
  await s.server.sendToUser("u2", "Notice", { to: "u2" });
  await h.waitFor(() => got.every((g, i) => g.length === (i === 3 ? 1 : 2)), () => JSON.stringify(got));
  for (const g of got.slice(0, 3)) assert.deepEqual(g, [{ n: 1 }, { n: 2 }], "once per socket, in order");
  assert.deepEqual(got[3], [{ to: "u2" }]);

  // A bad sign-in is an error, and the connection stays.
  const raw = await h.RawSocket.open(s.herald);
  const userData = JSON.stringify({ id: "u1" });
  raw.send({ event: "pusher:signin", data: { auth: `${h.APP.key}:${"0".repeat(64)}`, user_data: userData } });
  const refused = await raw.event("pusher:error");
  assert.equal(typeof refused.data, "object", refused.raw);
  await raw.alive();
  raw.close();
});

test("USER-2 terminate_connections closes u1's signed-in sockets with 4009, no retry; others stay", async () => {
  const signedIn = h.pusherClient(s.herald);
  const bob = h.pusherClient(s.herald, { user: h.USERS.u2 });
  const presenceOnly = h.pusherClient(s.herald); // u1 in a presence channel, never signed in
  const seen = h.record(signedIn);
  await Promise.all([signIn(signedIn), signIn(bob)]);
  const rooms = [bob.subscribe("presence-user2"), presenceOnly.subscribe("presence-user2")];
  await Promise.all(rooms.map(h.subscribed));
  const ids = [bob.connection.socket_id, presenceOnly.connection.socket_id];

  assert.deepEqual(await h.json(s.server.terminateUserConnections("u1")), {});
  await h.waitFor(() => signedIn.connection.state === "disconnected", () => `disconnected: ${JSON.stringify(seen.states)}`);
  assert.ok(seen.closes.includes(4009), `close codes ${JSON.stringify(seen.closes)}`);
  assert.ok(seen.errors.some((e) => h.errorCode(e) === 4009), JSON.stringify(seen.errors));
  const frame = seen.received.find((f) => f.event === "pusher:error");
  assert.equal(frame && frame.data.code, 4009, "pusher:error 4009 before the close");
  // pusher-js would retry within a second after a close it may retry.
  await h.holds(() => signedIn.connection.state !== "disconnected", () => `retried: ${JSON.stringify(seen.states)}`, 2000);

  const got = rooms.map((room) => {
    const list = [];
    room.bind("StillHere", (data) => list.push(data));
    return list;
  });
  await s.server.trigger("presence-user2", "StillHere", {});
  await h.waitFor(() => got.every((g) => g.length === 1), "the others still receive");
  assert.deepEqual([bob.connection.socket_id, presenceOnly.connection.socket_id], ids);
  assert.equal(bob.connection.state, "connected");
  assert.equal(presenceOnly.connection.state, "connected");
});
