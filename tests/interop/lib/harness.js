// The shared harness of herald's Pusher interop tests (.ci/interop).
//
// It starts a freshly built herald (HERALD_BIN, default target/debug/herald)
// with a config file written to a temp dir, and makes what the tests point
// at it: pusher-js and Laravel Echo clients (Node builds), the Node server
// SDK, a Laravel-like auth endpoint (/broadcasting/auth, /broadcasting/user-auth),
// raw WebSocket clients, a TCP proxy the test can cut, and signed HTTP API
// requests. Everything binds 127.0.0.1, port 0; every wait has a deadline.
import { spawn } from "node:child_process";
import { before, after } from "node:test";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Pusher from "pusher-js"; // its Node build, dist/node/pusher.js
import PusherServer from "pusher";
// laravel-echo 2.5.0's CommonJS build cannot be required (its package is "type": "module"): import it.
import Echo from "laravel-echo";
import WebSocket from "ws";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const HERALD_BIN = process.env.HERALD_BIN || path.join(ROOT, "target/debug/herald");
/** How long any one wait may take before the test fails. */
export const DEADLINE_MS = 10000;

/** The test app: the Laravel `.env` of README.md's "Coming from Pusher" section. */
export const APP = { id: "1", key: "app-key", secret: "app-secret-0123456789" };
/** A second app, with client events off (the default). */
export const QUIET_APP = { id: "2", key: "quiet-key", secret: "quiet-secret-0123456789" };
/** The encryption master key of `private-encrypted-` channels (32 bytes, base64); herald never sees it. */
export const MASTER_KEY = Buffer.alloc(32, 7).toString("base64");
const API_KEY = "interop-api-key-0123456789abcdef0123456789";
const TOKEN_SECRET = "interop-token-secret-0123456789abcdef012345";

/** The users the auth endpoint knows, as a Laravel app's presence callback would return them. */
export const USERS = {
  u1: { id: "u1", name: "Ada" },
  u2: { id: "u2", name: "Bob" },
  u3: { id: "u3", name: "Cy" },
};

Pusher.logToConsole = false;

// ---------------------------------------------------------------- waiting

/** Resolves with the first truthy value of `condition()`, polled every 10 ms; fails past `ms`. */
export async function waitFor(condition, what, ms = DEADLINE_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > end) {
      const detail = typeof what === "function" ? what() : what;
      throw new Error(`timed out after ${ms} ms waiting for ${detail}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Asserts that `condition()` stays false for `ms`: for "this must not happen" checks only. */
export async function holds(condition, what, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await condition()) throw new Error(`unexpected: ${typeof what === "function" ? what() : what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

// ---------------------------------------------------------------- herald

function tomlValue(value) {
  return typeof value === "string" || Array.isArray(value) ? JSON.stringify(value) : String(value);
}

function tomlTable(fields) {
  return Object.entries(fields).map(([k, v]) => `${k} = ${tomlValue(v)}`);
}

/**
 * The herald config file: the test app (client events on) and the quiet app,
 * each overridable (`app`, `quiet`), plus top-level settings (`top`).
 */
export function configToml({ top = {}, app = {}, quiet = {} } = {}) {
  const lines = [...tomlTable({ api_key: API_KEY, token_secret: TOKEN_SECRET, ...top }), ""];
  for (const fields of [{ ...APP, client_events: true, ...app }, { ...QUIET_APP, ...quiet }]) {
    lines.push("[[apps]]", ...tomlTable(fields), "");
  }
  return lines.join("\n");
}

/**
 * Starts herald on 127.0.0.1:0 with the config file `options.text`, or else
 * `configToml(options)`, and resolves once it prints `herald listening on
 * IP:PORT`. `stop()` kills it.
 */
export async function startHerald(options = {}) {
  if (!fs.existsSync(HERALD_BIN)) {
    throw new Error(`no herald binary at ${HERALD_BIN}: run \`cargo build\` (or set HERALD_BIN)`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "herald-interop-"));
  const config = path.join(dir, "herald.toml");
  fs.writeFileSync(config, options.text ?? configToml(options));
  const child = spawn(HERALD_BIN, ["serve", "--config", config, "--listen", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
  });
  const log = [];
  const keep = (chunk) => {
    log.push(...chunk.toString().split("\n").filter(Boolean));
    log.splice(0, Math.max(0, log.length - 200));
  };
  child.stderr.on("data", keep);
  let out = "";
  child.stdout.on("data", (chunk) => (out += chunk.toString()));
  let exited = null;
  child.on("exit", (code, signal) => (exited = { code, signal }));
  const addr = await waitFor(
    () => {
      if (exited) throw new Error(`herald exited (${JSON.stringify(exited)}):\n${log.join("\n")}`);
      const match = out.match(/^herald listening on (\S+)$/m);
      return match && match[1];
    },
    () => `herald to print "herald listening on"; stderr:\n${log.join("\n")}`,
  );
  child.stdout.removeAllListeners("data");
  child.stdout.resume();
  const [host, port] = [addr.slice(0, addr.lastIndexOf(":")), Number(addr.slice(addr.lastIndexOf(":") + 1))];
  const herald = {
    host,
    port,
    addr,
    url: `http://${addr}`,
    config,
    log,
    child,
    stop() {
      if (!exited) child.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  stopAtExit.add(herald);
  return herald;
}

const stopAtExit = new Set();
process.on("exit", () => {
  for (const herald of stopAtExit) herald.stop();
});

/**
 * The servers one test file shares, started before its first test and
 * stopped after its last: `auth`, the app's server (its auth endpoint, and
 * `files`), `herald` (`options` as startHerald takes them; with `browser:
 * true`, the app server's origin in `allowed_origins`, as a site's origin
 * must be for its pages to connect), `server`, the Node SDK, and with
 * `proxy: true`, `proxy` in front of herald. The fields are there once the
 * file's `before` hook has run.
 */
export function setup({ proxy = false, browser = false, files, ...options } = {}) {
  const servers = {};
  before(async () => {
    servers.auth = await authServer({ files });
    if (browser) options.top = { ...options.top, allowed_origins: [servers.auth.url] };
    servers.herald = await startHerald(options);
    if (proxy) servers.proxy = await startProxy(servers.herald);
    servers.server = sdk(servers.herald);
  });
  after(async () => {
    disconnectAll();
    if (servers.proxy) await servers.proxy.close();
    if (servers.auth) await servers.auth.close();
    if (servers.herald) servers.herald.stop();
  });
  return servers;
}

// ---------------------------------------------------------------- clients

/** The Node server SDK pointed at herald (optionally as another app). */
export function sdk(herald, app = APP, options = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: herald.host,
    port: String(herald.port),
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
    ...options,
  });
}

/** The Node SDK as an app's auth endpoint uses it: it only signs, so it needs no address. */
export function signer(app = APP) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });
}

/** The presence `channel_data` and sign-in `user_data` of a user. */
export function presenceData(user) {
  return { user_id: user.id, user_info: { id: user.id, name: user.name } };
}

const clients = new Set();

/** Calls `fn(connection)` for each connection pusher-js makes, before its own "connected" listeners run. */
function onEachConnection(client, fn) {
  const manager = client.connection;
  const setConnection = manager.setConnection;
  manager.setConnection = function (connection) {
    const result = setConnection.call(this, connection);
    fn(connection);
    return result;
  };
}

/**
 * Keeps a client from holding the test process open: pusher-js closes its
 * socket again after herald closed it with a 40xx code, and faye-websocket
 * (in pusher-js's Node build) then waits 30 s for a close handshake that
 * cannot come. That timer is left to run, unreferenced.
 */
function track(client) {
  clients.add(client);
  onEachConnection(client, (connection) => {
    const socket = connection.transport && connection.transport.socket;
    if (!socket || typeof socket.close !== "function") return;
    const close = socket.close;
    socket.close = function (...args) {
      const result = close.apply(this, args);
      if (this._closeTimer && this._closeTimer.unref) this._closeTimer.unref();
      return result;
    };
  });
  return client;
}

/**
 * A pusher-js client (its Node build) of the test app, as in PUSHER.md §6.2:
 * it authorizes channels and signs in with the SDK in a customHandler, as
 * `user` (one of USERS, or any {id, name}). Extra `options` go to pusher-js.
 */
export function pusherClient(herald, { user = USERS.u1, app = APP, ...options } = {}) {
  const server = sdk(herald, app);
  const client = new Pusher(app.key, {
    cluster: "mt1", // required by pusher-js 8; unused with wsHost
    wsHost: herald.host,
    wsPort: herald.port,
    forceTLS: false,
    enabledTransports: ["ws"],
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) =>
        callback(
          null,
          server.authorizeChannel(
            socketId,
            channelName,
            channelName.startsWith("presence-") ? presenceData(user) : undefined,
          ),
        ),
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) =>
        callback(null, server.authenticateUser(socketId, { id: user.id, user_info: { name: user.name } })),
    },
    ...options,
  });
  return track(client);
}

/**
 * Laravel Echo in Node, with exactly the options README.md's "Coming from
 * Pusher, Soketi or Reverb" section shows for resources/js/echo.js (the
 * `pusher` broadcaster; `reverb` takes the same options without `cluster`),
 * authorizing through the auth endpoint `auth` as the user whose id is
 * `user` (sent as a bearer token, as Sanctum apps do).
 */
export function echo(herald, auth, { user = "u1", broadcaster = "pusher", ...options } = {}) {
  const settings = {
    broadcaster,
    key: APP.key,
    wsHost: herald.host,
    wsPort: herald.port,
    wssPort: herald.port,
    forceTLS: false,
    enabledTransports: ["ws", "wss"],
    // Node has no page origin: the endpoints are absolute here.
    authEndpoint: `${auth.url}/broadcasting/auth`,
    auth: { headers: {} },
    userAuthentication: { endpoint: `${auth.url}/broadcasting/user-auth`, headers: {} },
    bearerToken: user,
    Pusher,
    ...options,
  };
  if (broadcaster === "pusher") settings.cluster = "mt1";
  const instance = new Echo(settings);
  track(instance.connector.pusher);
  return instance;
}

/** Disconnects every client made so far (call in `after`). */
export function disconnectAll() {
  for (const client of clients) client.disconnect();
  clients.clear();
}

/** Waits until a pusher-js client's state is `state`. */
export function waitState(client, state, ms) {
  return waitFor(() => client.connection.state === state, () => `state ${state} (is ${client.connection.state})`, ms);
}

/** Resolves when a pusher-js channel (or Echo channel) has subscribed; rejects on its subscription error. */
export function subscribed(channel) {
  const subscription = channel.subscription || channel;
  if (subscription.subscribed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`subscribing ${subscription.name} timed out`)), DEADLINE_MS);
    subscription.bind("pusher:subscription_succeeded", () => {
      clearTimeout(timer);
      resolve();
    });
    subscription.bind("pusher:subscription_error", (error) => {
      clearTimeout(timer);
      reject(new Error(`subscribing ${subscription.name} failed: ${JSON.stringify(error)}`));
    });
  });
}

/**
 * Collects the events `events` of a pusher-js (or Echo) channel, in order:
 * [[event, data], ...], with what pusher-js passed as metadata (a
 * presence client event's `user_id`) in `.metadata`, index for index.
 */
export function collect(channel, ...events) {
  const got = [];
  Object.defineProperty(got, "metadata", { value: [] }); // not enumerable: deepEqual ignores it
  const subscription = channel.subscription || channel;
  for (const event of events) {
    subscription.bind(event, (data, metadata) => {
      got.push([event, data]);
      got.metadata.push(metadata);
    });
  }
  return got;
}

/** The code of a pusher-js connection error, wherever pusher-js put it. */
export function errorCode(error) {
  const data = (error && (error.data || (error.error && error.error.data))) || {};
  return data.code;
}

/**
 * Records what a pusher-js client sees below its API: every raw frame it
 * receives (parsed, after the handshake) and sends, the close codes of its
 * transports, its states (the one it is in, then each change) and its
 * connection errors.
 */
export function record(client) {
  const seen = { received: [], sent: [], closes: [], states: [client.connection.state], errors: [] };
  let transport = null;
  const onMessage = (event) => {
    try {
      seen.received.push(JSON.parse(event.data));
    } catch {
      seen.received.push({ unparsable: String(event.data) });
    }
  };
  const onClosed = (event) => seen.closes.push(event && event.code);
  const hook = () => {
    const next = client.connection.connection && client.connection.connection.transport;
    if (!next || next === transport) return;
    transport = next;
    next.bind("message", onMessage);
    next.bind("closed", onClosed);
    const send = next.send.bind(next);
    next.send = (data) => {
      seen.sent.push(JSON.parse(data));
      return send(data);
    };
  };
  // Before pusher-js's own "connected" listeners, which send the subscribes.
  onEachConnection(client, hook);
  client.connection.bind("connected", hook);
  client.connection.bind("state_change", ({ current }) => seen.states.push(current));
  client.connection.bind("error", (error) => seen.errors.push(error));
  hook();
  return seen;
}

// ---------------------------------------------------------------- auth endpoint

function readBody(request) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => resolve(Buffer.concat(chunks).toString()));
    request.on("error", reject);
  });
}

/** A signature made wrong in one of the ways PRIV-2 tries (header X-Tamper). */
function tamper(how, server, socketId, channel, data) {
  switch (how) {
    case "key": {
      const signed = server.authorizeChannel(socketId, channel, data);
      return { ...signed, auth: `other-key:${signed.auth.split(":")[1]}` };
    }
    case "signature": {
      const signed = server.authorizeChannel(socketId, channel, data);
      const hex = signed.auth.split(":")[1];
      const flipped = (hex[0] === "0" ? "1" : "0") + hex.slice(1);
      return { ...signed, auth: `${APP.key}:${flipped}` };
    }
    case "socket":
      return server.authorizeChannel(socketId === "1.1" ? "2.2" : "1.1", channel, data);
    case "channel":
      return server.authorizeChannel(socketId, `${channel}x`, data);
    case "secret":
      return signer({ ...APP, secret: "not-the-secret" }).authorizeChannel(
        socketId,
        channel,
        data,
      );
    default:
      throw new Error(`unknown tampering ${how}`);
  }
}

/**
 * A Laravel-like app server on 127.0.0.1:0: `POST /broadcasting/auth` and
 * `POST /broadcasting/user-auth` (form-encoded `socket_id`, `channel_name`;
 * the user is the bearer token; 403 for an unknown user, for channels whose
 * name contains `forbidden`), answered with the Node SDK as Laravel's
 * PusherBroadcaster answers; `files` maps paths to [content type, file] for
 * GET. `requests` lists what it was asked.
 */
export async function authServer({ files = {} } = {}) {
  const server = signer();
  const requests = [];
  const http_ = http.createServer(async (request, response) => {
    const url = new URL(request.url, "http://127.0.0.1");
    const send = (status, type, body) => {
      response.writeHead(status, { "content-type": type, "cache-control": "no-store" });
      response.end(body);
    };
    try {
      if (request.method === "GET" && files[url.pathname]) {
        const [type, file] = files[url.pathname];
        return send(200, type, typeof file === "function" ? file() : fs.readFileSync(file));
      }
      if (request.method !== "POST") return send(404, "text/plain", "not found");
      const form = new URLSearchParams(await readBody(request));
      const bearer = (request.headers.authorization || "").replace(/^Bearer /, "");
      const user = USERS[bearer];
      const socketId = form.get("socket_id");
      const channel = form.get("channel_name");
      requests.push({ path: url.pathname, user: bearer, socketId, channel, contentType: request.headers["content-type"] });
      if (!user) return send(403, "text/plain", "Forbidden");
      if (url.pathname === "/broadcasting/auth") {
        if (!channel || channel.includes("forbidden")) return send(403, "text/plain", "Forbidden");
        const data = channel.startsWith("presence-") ? presenceData(user) : undefined;
        const how = request.headers["x-tamper"];
        const answer = how ? tamper(how, server, socketId, channel, data) : server.authorizeChannel(socketId, channel, data);
        return send(200, "application/json", JSON.stringify(answer));
      }
      if (url.pathname === "/broadcasting/user-auth") {
        const answer = server.authenticateUser(socketId, { id: user.id, user_info: { name: user.name } });
        return send(200, "application/json", JSON.stringify(answer));
      }
      return send(404, "text/plain", "not found");
    } catch (error) {
      return send(500, "text/plain", String(error));
    }
  });
  await new Promise((resolve) => http_.listen(0, "127.0.0.1", resolve));
  const { port } = http_.address();
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    close: () => {
      http_.closeAllConnections();
      return new Promise((resolve) => http_.close(resolve));
    },
  };
}

// ---------------------------------------------------------------- raw WebSocket

/** A raw WebSocket client of herald's Pusher endpoint (the `ws` package), for exact frame shapes. */
export class RawSocket {
  /** Opens `ws://HOST:PORT{path}` and waits for the first frame. */
  static async open(herald, { key = APP.key, path: urlPath, autoPong = true } = {}) {
    const target = urlPath || `/app/${key}?protocol=7&client=js&version=8.6.0&flash=false`;
    const socket = new RawSocket(new WebSocket(`ws://${herald.addr}${target}`, { autoPong }));
    await waitFor(() => socket.frames.length > 0 || socket.closed, `the first frame from ${target}`);
    const first = socket.frames[0];
    if (first && first.event === "pusher:connection_established" && typeof first.data === "string") {
      socket.socketId = JSON.parse(first.data).socket_id;
    }
    return socket;
  }

  constructor(ws) {
    this.ws = ws;
    /** Every frame received, parsed (`raw` keeps the text). */
    this.frames = [];
    this.binary = [];
    this.pings = 0;
    this.closed = null;
    this.consumed = new Set();
    ws.on("message", (data, isBinary) => {
      if (isBinary) return this.binary.push(data);
      const text = data.toString();
      let frame;
      try {
        frame = JSON.parse(text);
      } catch {
        frame = { unparsable: text };
      }
      Object.defineProperty(frame, "raw", { value: text, enumerable: false });
      this.frames.push(frame);
    });
    ws.on("ping", () => this.pings++);
    ws.on("close", (code, reason) => (this.closed = { code, reason: reason.toString(), at: Date.now() }));
    ws.on("error", () => {});
  }

  send(frame) {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** Waits for the next frame (not taken before) that matches `predicate`, and takes it. */
  async take(predicate, what, ms) {
    return waitFor(
      () => {
        const index = this.frames.findIndex((frame, i) => !this.consumed.has(i) && predicate(frame));
        if (index < 0) return null;
        this.consumed.add(index);
        return this.frames[index];
      },
      () => `${what}; frames so far: ${this.frames.map((f) => f.raw).join(" | ")}`,
      ms,
    );
  }

  /** Takes the next frame whose event is `event` (and channel `channel`, if given). */
  event(event, channel, ms) {
    return this.take(
      (f) => f.event === event && (channel === undefined || f.channel === channel),
      `${event}${channel ? ` on ${channel}` : ""}`,
      ms,
    );
  }

  /** Subscribes (with `fields`: auth, channel_data, ...) and waits for success or an error. */
  async subscribe(channel, fields = {}) {
    this.send({ event: "pusher:subscribe", data: { auth: "", ...fields, channel } });
    return this.take(
      (f) =>
        f.channel === channel &&
        (f.event === "pusher_internal:subscription_succeeded" || f.event === "pusher:subscription_error"),
      `the answer to subscribing ${channel}`,
    );
  }

  /** Answers `pusher:ping` with `pusher:pong`: proves the connection is alive and served. */
  async alive() {
    this.send({ event: "pusher:ping", data: {} });
    return this.event("pusher:pong");
  }

  close() {
    if (!this.closed) this.ws.terminate();
  }
}

// ---------------------------------------------------------------- TCP proxy

/**
 * A TCP proxy in front of herald that the test can cut: `cut()` destroys
 * every proxied connection, and holds new ones (accepted, nothing passed
 * on, as on a network that is down) until `restore()` passes them on.
 * Holding rather than refusing keeps pusher-js from backing off for many
 * seconds, so a test's outage lasts as long as the test wants.
 * `accepted` counts the connections it took, `held` those it held.
 */
export async function startProxy(target) {
  const sockets = new Set();
  const waiting = [];
  const proxy = { accepted: 0, held: 0, cutting: false };
  const pass = (client) => {
    const upstream = net.connect(target.port, target.host);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ]) {
      sockets.add(from);
      from.pipe(to);
      from.on("error", () => to.destroy());
      from.on("close", () => {
        sockets.delete(from);
        to.destroy();
      });
    }
  };
  const server = net.createServer((client) => {
    proxy.accepted++;
    if (!proxy.cutting) return pass(client);
    proxy.held++;
    client.pause();
    client.on("error", () => {});
    waiting.push(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.host = "127.0.0.1";
  proxy.port = server.address().port;
  proxy.addr = `127.0.0.1:${proxy.port}`;
  proxy.cut = () => {
    proxy.cutting = true;
    for (const socket of sockets) socket.destroy();
  };
  proxy.restore = () => {
    proxy.cutting = false;
    for (const client of waiting.splice(0)) if (!client.destroyed) pass(client);
  };
  proxy.close = () => {
    proxy.cut();
    for (const client of waiting.splice(0)) client.destroy();
    return new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}

// ---------------------------------------------------------------- HTTP API

export function md5(text) {
  return crypto.createHash("md5").update(text, "utf8").digest("hex");
}

export function hmac(secret, text) {
  return crypto.createHmac("sha256", secret).update(text).digest("hex");
}

/**
 * A Pusher HTTP API request signed as PUSHER.md §4.2 says, each part
 * overridable so a test can get it wrong on purpose: `signedPath` (default:
 * the path), `skew` (seconds added to the timestamp), `bodyMd5`, `app` (key and secret), `sendParams`
 * (query parameters added or changed after signing). Resolves to
 * {status, text, json}.
 */
export async function apiRequest(herald, { method = "GET", path: urlPath, params = {}, body, app = APP, ...wrong }) {
  const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
  const query = {
    auth_key: app.key,
    auth_timestamp: String(Math.floor(Date.now() / 1000) + (wrong.skew ?? 0)),
    auth_version: "1.0",
    ...params,
  };
  if (text !== "" || wrong.bodyMd5) query.body_md5 = wrong.bodyMd5 ?? md5(text);
  const signed = Object.keys(query)
    .sort()
    .map((k) => `${k}=${query[k]}`)
    .join("&");
  const signature = hmac(app.secret, `${method}\n${wrong.signedPath ?? urlPath}\n${signed}`);
  const sent = { ...query, ...(wrong.sendParams || {}) };
  const queryString = Object.keys(sent)
    .map((k) => `${k}=${sent[k]}`)
    .join("&");
  const response = await fetch(`${herald.url}${urlPath}?${queryString}&auth_signature=${signature}`, {
    method,
    body: text === "" ? undefined : text,
    headers: text === "" ? {} : { "content-type": "application/json" },
  });
  const answer = await response.text();
  let json;
  try {
    json = JSON.parse(answer);
  } catch {
    json = undefined;
  }
  return { status: response.status, text: answer, json };
}

/** The JSON body of an SDK call's response. */
export async function json(promise) {
  const response = await promise;
  return response.json();
}

/** The status of a rejected SDK call (or "resolved" if it did not reject). */
export async function statusOf(promise) {
  try {
    await promise;
    return "resolved";
  } catch (error) {
    return error.status ?? String(error);
  }
}

export { Pusher, Echo, WebSocket };
