// PRIV-1, PRIV-2, PRES-1, PRES-2 (Node SDK half; Pysher's is in
// python/test_pysher.py), CE-1 and CE-2 of the interop matrix: private and
// presence channels and client events through pusher-js 8.6.0 and Laravel
// Echo 2.5.0, authorized by a customHandler and by a real auth endpoint.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as h from "./lib/harness.js";

const s = h.setup();


/** Records what Echo's presence callbacks report. */
function presenceLog(channel) {
  const log = { here: null, joining: [], leaving: [] };
  channel
    .here((members) => (log.here = members))
    .joining((member) => log.joining.push(member))
    .leaving((member) => log.leaving.push(member));
  return log;
}

const ids = (members) => members.map((m) => m.id).sort();

test("PRIV-1 private channel via customHandler, via the XHR auth endpoint and via Echo", async () => {
  const custom = h.pusherClient(s.herald);
  const viaEndpoint = h.pusherClient(s.herald, {
    channelAuthorization: {
      endpoint: `${s.auth.url}/broadcasting/auth`,
      transport: "ajax",
      headers: { Authorization: "Bearer u2" },
    },
  });
  const laravel = h.echo(s.herald, s.auth, { user: "u3" });
  const channels = [custom.subscribe("private-orders.1"), viaEndpoint.subscribe("private-orders.1")];
  const echoed = [];
  const echoChannel = laravel.private("orders.1").listen(".OrderShipped", (data) => echoed.push(data));
  await Promise.all([...channels.map(h.subscribed), h.subscribed(echoChannel)]);
  const got = channels.map((channel) => h.collect(channel, "OrderShipped"));

  await s.server.trigger("private-orders.1", "OrderShipped", { id: 1 });
  await h.waitFor(() => got.every((g) => g.length === 1) && echoed.length === 1, () => JSON.stringify({ got, echoed }));
  for (const g of got) assert.deepEqual(g, [["OrderShipped", { id: 1 }]]);
  assert.deepEqual(echoed, [{ id: 1 }]);

  // The endpoint was asked as Laravel is: form-encoded, with this socket's id.
  const asked = s.auth.requests.filter((r) => r.channel === "private-orders.1");
  assert.deepEqual(asked.map((r) => r.user).sort(), ["u2", "u3"]);
  for (const request of asked) {
    assert.equal(request.contentType, "application/x-www-form-urlencoded");
    assert.match(request.socketId, /^\d+\.\d+$/);
  }

  // A 403 from the endpoint is pusher-js's own AuthError, and nothing is sent to herald.
  const denied = await new Promise((resolve) => laravel.private("forbidden.1").error(resolve));
  assert.equal(denied.type, "AuthError");
  assert.equal(denied.status, 403);
});

test("PRIV-2 tampered auth: Echo's .error() gets AuthError 401, no events, the connection stays", async () => {
  for (const how of ["key", "signature", "socket", "channel", "secret"]) {
    const laravel = h.echo(s.herald, s.auth, { auth: { headers: { "X-Tamper": how } } });
    const pusher = laravel.connector.pusher;
    const seen = h.record(pusher);
    const errors = [];
    const got = [];
    const channel = laravel
      .private(`priv2.${how}`)
      .error((error) => errors.push(error))
      .listen(".Leak", (data) => got.push(data));
    const marker = laravel.channel(`priv2-marker.${how}`).listen(".Marker", (data) => got.push(data));
    await h.subscribed(marker);
    await h.waitFor(() => errors.length === 1, `${how}: the subscription error`);
    assert.deepEqual({ type: errors[0].type, status: errors[0].status }, { type: "AuthError", status: 401 }, how);
    const frame = seen.received.find((f) => f.event === "pusher:subscription_error");
    assert.equal(frame.channel, `private-priv2.${how}`);
    assert.equal(typeof frame.data, "object", "subscription_error data is an object");
    assert.equal(frame.data.type, "AuthError");
    assert.equal(frame.data.status, 401);
    assert.equal(typeof frame.data.error, "string");

    const socketId = pusher.connection.socket_id;
    await s.server.trigger(`private-priv2.${how}`, "Leak", { secret: true });
    await s.server.trigger(`priv2-marker.${how}`, "Marker", { how });
    await h.waitFor(() => got.length >= 1, `${how}: the marker`);
    assert.deepEqual(got, [{ how }], `${how}: no event of the refused channel`);
    assert.equal(pusher.connection.state, "connected");
    assert.equal(pusher.connection.socket_id, socketId, "no reconnect");
    assert.ok(!channel.subscription.subscribed);
    pusher.disconnect();
  }

  // No auth at all must not hurt either (a Reverb crash, #89).
  const raw = await h.RawSocket.open(s.herald);
  raw.send({ event: "pusher:subscribe", data: { channel: "private-noauth" } });
  const answer = await raw.event("pusher:subscription_error", "private-noauth");
  assert.equal(answer.data.status, 401, answer.raw);
  await raw.alive();
  raw.close();
});

test("PRES-1 presence with sockets u1, u1, u2: here, joining and leaving per user; API counts users", async () => {
  const room = "room.pres1";
  const name = `presence-${room}`;
  const echoes = [h.echo(s.herald, s.auth, { user: "u1" }), h.echo(s.herald, s.auth, { user: "u1" }), h.echo(s.herald, s.auth, { user: "u2" })];
  const seen = h.record(echoes[2].connector.pusher);
  const logs = [];
  const channels = [];
  for (const e of echoes) {
    // One after another, so that who joined before whom is known.
    const channel = e.join(room);
    logs.push(presenceLog(channel));
    channels.push(channel);
    await h.subscribed(channel);
    await h.waitFor(() => logs.at(-1).here, "here()");
  }
  assert.deepEqual(ids(logs[0].here), ["u1"], "here includes the subscriber itself");
  assert.deepEqual(ids(logs[1].here), ["u1"], "a second socket of u1 is still one member");
  assert.deepEqual(ids(logs[2].here), ["u1", "u2"]);
  assert.deepEqual(logs[2].here.find((m) => m.id === "u1"), { id: "u1", name: "Ada" }, "user_info as given");
  await h.waitFor(() => logs[0].joining.length >= 1 && logs[1].joining.length >= 1, "joining(u2)");
  assert.deepEqual(logs[0].joining, [{ id: "u2", name: "Bob" }], "joining fired once, for u2 only");
  assert.deepEqual(logs[1].joining, [{ id: "u2", name: "Bob" }]);

  const succeeded = seen.received.find((f) => f.event === "pusher_internal:subscription_succeeded");
  assert.equal(typeof succeeded.data, "string");
  const presence = JSON.parse(succeeded.data).presence;
  assert.deepEqual([...presence.ids].sort(), ["u1", "u2"]);
  assert.equal(presence.count, 2);
  assert.deepEqual(presence.hash.u2, { id: "u2", name: "Bob" });

  const users = await h.json(s.server.get({ path: `/channels/${name}/users` }));
  assert.deepEqual(ids(users.users), ["u1", "u2"]);
  const info = await h.json(s.server.get({ path: `/channels/${name}`, params: { info: "user_count,subscription_count" } }));
  assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 3 });

  // u1's first socket leaves: u1 is still there.
  echoes[0].leave(room);
  await h.waitFor(async () => {
    const now = await h.json(s.server.get({ path: `/channels/${name}`, params: { info: "subscription_count" } }));
    return now.subscription_count === 2;
  }, "subscription_count 2");
  const marks = h.collect(channels[2], "Marker");
  await s.server.trigger(name, "Marker", {});
  await h.waitFor(() => marks.length === 1, "the marker");
  assert.deepEqual(logs[2].leaving, [], "no leaving while u1 has a socket in the channel");

  echoes[1].leave(room);
  await h.waitFor(() => logs[2].leaving.length >= 1, "leaving(u1)");
  assert.deepEqual(logs[2].leaving, [{ id: "u1", name: "Ada" }]);
  const after = await h.json(s.server.get({ path: `/channels/${name}/users` }));
  assert.deepEqual(after, { users: [{ id: "u2" }] });
});

test("PRES-2 a numeric user_id (Node SDK) is accepted and becomes a string", async () => {
  const name = "presence-pres2";
  const first = h.pusherClient(s.herald);
  const firstSeen = h.record(first);
  await h.subscribed(first.subscribe(name));
  const numeric = h.pusherClient(s.herald, {
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) =>
        callback(null, s.server.authorizeChannel(socketId, channelName, { user_id: 10, user_info: { name: "Ten" } })),
    },
  });
  const seen = h.record(numeric);
  const channel = numeric.subscribe(name);
  await h.subscribed(channel);
  assert.ok(seen.sent.some((f) => f.event === "pusher:subscribe" && f.data.channel_data.includes('"user_id":10')));

  const presence = JSON.parse(seen.received.find((f) => f.event === "pusher_internal:subscription_succeeded").data).presence;
  assert.deepEqual([...presence.ids].sort(), ["10", "u1"], "ids are strings");
  assert.deepEqual(presence.hash["10"], { name: "Ten" });
  const added = await h.waitFor(() => firstSeen.received.find((f) => f.event === "pusher_internal:member_added"), "member_added");
  assert.equal(typeof added.data, "string");
  assert.deepEqual(JSON.parse(added.data), { user_id: "10", user_info: { name: "Ten" } });
  assert.equal(channel.members.count, 2);
  const users = await h.json(s.server.get({ path: `/channels/${name}/users` }));
  assert.deepEqual(ids(users.users), ["10", "u1"]);
});

test("CE-1 whispers on private and presence channels reach the others, not the sender", async () => {
  const [a, b] = [h.echo(s.herald, s.auth, { user: "u1" }), h.echo(s.herald, s.auth, { user: "u2" })];
  const seenB = h.record(b.connector.pusher);
  const privates = [a.private("ce1"), b.private("ce1")];
  const rooms = [a.join("ce1"), b.join("ce1")];
  const whispers = [...privates, ...rooms].map((channel) => h.collect(channel, "client-typing", "Marker"));
  await Promise.all([...privates, ...rooms].map(h.subscribed));

  privates[0].whisper("typing", { name: "Ada" });
  rooms[0].whisper("typing", { name: "Ada", in: "room" });
  const pusherA = a.connector.pusher;
  pusherA.channel("private-ce1").trigger("client-typing", "a string");
  pusherA.channel("private-ce1").trigger("client-typing", "");
  pusherA.channel("private-ce1").trigger("client-typing");
  await h.waitFor(() => whispers[1].length === 4 && whispers[3].length === 1, () => JSON.stringify(whispers));
  assert.deepEqual(
    whispers[1].map(([, data]) => data),
    [{ name: "Ada" }, "a string", "", undefined],
  );
  assert.deepEqual(whispers[3], [["client-typing", { name: "Ada", in: "room" }]]);
  assert.equal(whispers[3].metadata[0].user_id, "u1", "presence whispers carry the sender's user_id");
  const privateFrame = seenB.received.find((f) => f.event === "client-typing" && f.channel === "private-ce1");
  assert.equal(privateFrame.user_id, undefined, "no user_id on private channels");

  // The sender got none of its whispers: the markers after them arrive alone.
  await s.server.trigger(["private-ce1", "presence-ce1"], "Marker", {});
  await h.waitFor(() => whispers[0].length >= 1 && whispers[2].length >= 1, "the markers");
  assert.deepEqual(whispers[0].map(([event]) => event), ["Marker"]);
  assert.deepEqual(whispers[2].map(([event]) => event), ["Marker"]);
});

test("CE-2 client events refused (public channel, not subscribed, app without them, over 10/s) without closing", async () => {
  const [a, b] = [h.pusherClient(s.herald), h.pusherClient(s.herald, { user: h.USERS.u2 })];
  const [seenA, seenB] = [h.record(a), h.record(b)];
  const publics = [a.subscribe("ce2-public"), b.subscribe("ce2-public")];
  const privates = [a.subscribe("private-ce2"), b.subscribe("private-ce2")];
  await Promise.all([...publics, ...privates].map(h.subscribed));
  const socketId = a.connection.socket_id;
  const errorsOf = (seen) => seen.received.filter((f) => f.event === "pusher:error");

  publics[0].trigger("client-x", { on: "public" });
  await h.waitFor(() => errorsOf(seenA).length === 1, "the error for a public channel");
  a.send_event("client-x", { on: "elsewhere" }, "private-ce2-elsewhere");
  await h.waitFor(() => errorsOf(seenA).length === 2, "the error for a channel it is not in");

  // The quiet app has client events off.
  const quiet = [h.pusherClient(s.herald, { app: h.QUIET_APP }), h.pusherClient(s.herald, { app: h.QUIET_APP })];
  const seenQuiet = quiet.map(h.record);
  const quietChannels = quiet.map((client) => client.subscribe("private-ce2"));
  await Promise.all(quietChannels.map(h.subscribed));
  quietChannels[0].trigger("client-x", { on: "quiet" });
  await h.waitFor(() => errorsOf(seenQuiet[0]).length === 1, "the error of an app without client events");

  // 20 at once: more than 10 a second.
  for (let n = 0; n < 20; n++) privates[0].trigger("client-burst", { n });
  await h.waitFor(() => errorsOf(seenA).some((f) => f.data && f.data.code === 4301), () => `a 4301 error: ${JSON.stringify(errorsOf(seenA))}`);

  const marks = [...publics, ...privates].map((channel) => h.collect(channel, "Marker"));
  const quietMarks = quietChannels.map((channel) => h.collect(channel, "Marker"));
  await s.server.trigger(["ce2-public", "private-ce2"], "Marker", {});
  await h.sdk(s.herald, h.QUIET_APP).trigger("private-ce2", "Marker", {});
  await h.waitFor(() => marks.every((m) => m.length === 1) && quietMarks.every((m) => m.length === 1), "the markers");

  const relayed = seenB.received.filter((f) => f.event.startsWith("client-"));
  const burst = relayed.filter((f) => f.event === "client-burst");
  assert.deepEqual(
    relayed.filter((f) => f.event !== "client-burst"),
    [],
    "refused events reach nobody",
  );
  assert.ok(burst.length >= 1 && burst.length <= 11, `${burst.length} of 20 burst events were relayed`);
  assert.deepEqual(
    burst.map((f) => f.data.n),
    [...burst.keys()],
    "the first ones, in order",
  );
  assert.ok(!seenQuiet[1].received.some((f) => f.event.startsWith("client-")));
  for (const error of [...errorsOf(seenA), ...errorsOf(seenQuiet[0])]) {
    assert.equal(typeof error.data, "object", JSON.stringify(error));
    assert.ok("code" in error.data, JSON.stringify(error));
  }
  assert.equal(a.connection.state, "connected");
  assert.equal(a.connection.socket_id, socketId, "no close, no reconnect");
  assert.deepEqual(seenA.closes, []);
});
