// herald.js: the browser client for herald. One ES module, no build step, no dependencies.
//
//   import { Herald } from "https://herald.example.com/herald.js";
//   const herald = new Herald("https://herald.example.com", { token });
//   herald.subscribe("news", (data, message) => console.log(data, message.offset));
//   herald.on("state", (e) => console.log(e.state));
//
// It reconnects by itself (exponential backoff with jitter, capped),
// resubscribes every channel with `since` after every reconnect so that
// nothing published meanwhile is missed (while history holds it), and falls
// back to Server-Sent Events where WebSockets cannot connect.

const STATES = ["connecting", "connected", "disconnected", "closed"];

/** Close codes after which reconnecting would not help. */
const TERMINAL_CLOSE_CODES = new Set([4000, 1003, 1009]);

export class Herald {
  /**
   * @param {string} url herald's address: `https://host`, `http://host:8080`, `wss://host`.
   * @param {object} [options]
   */
  constructor(url, options = {}) {
    const base = new URL(url, typeof location === "undefined" ? undefined : location.href);
    const secure = base.protocol === "https:" || base.protocol === "wss:";
    this._http = `${secure ? "https" : "http"}://${base.host}`;
    this._ws = `${secure ? "wss" : "ws"}://${base.host}`;
    this._options = {
      token: null,
      getToken: null,
      transports: ["websocket", "sse"],
      minDelay: 500,
      maxDelay: 20000,
      connectTimeout: 10000,
      wsFailuresBeforeFallback: 2,
      ...options,
    };
    this._token = this._options.token;
    this._listeners = new Map();
    this._subs = new Map();
    this._pending = new Map();
    this._nextId = 1;
    this._attempt = 0;
    this._wsFailures = 0;
    this._transportIndex = 0;
    this._socket = null;
    this._source = null;
    this._timer = null;
    this._state = "disconnected";
    this.client = null;
    this.user = null;
    if (options.autoConnect !== false) this.connect();
  }

  /** "connecting", "connected", "disconnected" (will retry) or "closed". */
  get state() {
    return this._state;
  }

  /** "websocket" or "sse": the transport in use or being tried. */
  get transport() {
    return this._options.transports[this._transportIndex] ?? "websocket";
  }

  /** Listens to "state", "message", "subscribed", "error". Returns a function that stops listening. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this._listeners.get(event)?.delete(listener);
  }

  /** Opens the connection (done by the constructor unless `autoConnect: false`). */
  connect() {
    if (this._state === "connecting" || this._state === "connected") return;
    clearTimeout(this._timer);
    this._open();
  }

  /** Closes for good: no reconnect until `connect()`. */
  close() {
    clearTimeout(this._timer);
    this._teardown();
    this._setState("closed", {});
  }

  /**
   * Subscribes to a channel. `callback(data, message)` runs for every message, in order,
   * once each. Returns `{ unsubscribe() }`.
   */
  subscribe(channel, callback) {
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = { channel, callbacks: new Set(), epoch: null, offset: null };
      this._subs.set(channel, sub);
      if (this._state === "connected") this._sendSubscribe(sub, true);
    }
    sub.callbacks.add(callback);
    return {
      unsubscribe: () => {
        sub.callbacks.delete(callback);
        if (sub.callbacks.size > 0 || this._subs.get(channel) !== sub) return;
        this._subs.delete(channel);
        if (this._state !== "connected") return;
        if (this.transport === "websocket") {
          this._call({ op: "unsubscribe", channel }).catch(() => {});
        } else {
          this._reopenStream();
        }
      },
    };
  }

  /** Publishes (the channel's namespace must allow client publish). Resolves to `{epoch, offset}`. */
  publish(channel, data, { skipSelf = false } = {}) {
    return this._call({ op: "publish", channel, data, skip_self: skipSelf }).then((r) => ({
      epoch: r.epoch,
      offset: r.offset,
    }));
  }

  /** The channel's subscribers: `[{client, user}]`. */
  presence(channel) {
    return this._call({ op: "presence", channel }).then((r) => r.clients);
  }

  /** The channel's history: `{epoch, offset, publications: [{offset, data}]}`. */
  history(channel, { since = null, limit } = {}) {
    const command = { op: "history", channel };
    if (since) command.since = since;
    if (limit !== undefined) command.limit = limit;
    return this._call(command);
  }

  // ---- internals ----

  _emit(event, detail) {
    for (const listener of this._listeners.get(event) ?? []) {
      try {
        listener(detail);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  _setState(state, detail) {
    if (!STATES.includes(state)) return;
    const changed = state !== this._state;
    this._state = state;
    if (changed) this._emit("state", { state, transport: this.transport, ...detail });
  }

  async _open() {
    this._setState("connecting", { attempt: this._attempt });
    if (this._options.getToken && (this._attempt > 0 || !this._token)) {
      try {
        this._token = await this._options.getToken();
      } catch (error) {
        this._emit("error", { error });
        this._scheduleReconnect({ reason: "token" });
        return;
      }
      if (this._state !== "connecting") return;
    }
    if (this.transport === "sse" && typeof EventSource !== "undefined") {
      this._openStream();
    } else {
      this._openSocket();
    }
  }

  _openSocket() {
    const query = this._token ? `?token=${encodeURIComponent(this._token)}` : "";
    let socket;
    try {
      socket = new WebSocket(`${this._ws}/ws${query}`);
    } catch (error) {
      this._emit("error", { error });
      this._socketFailed(false);
      return;
    }
    this._socket = socket;
    let welcomed = false;
    const timeout = setTimeout(() => socket.close(), this._options.connectTimeout);
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.op === "welcome") {
        clearTimeout(timeout);
        welcomed = true;
        this._wsFailures = 0;
        this._attempt = 0;
        this.client = message.client;
        this.user = message.user;
        this._setState("connected", { client: message.client });
        for (const sub of this._subs.values()) this._sendSubscribe(sub, false);
        return;
      }
      this._onSocketMessage(message);
    };
    socket.onclose = (event) => {
      clearTimeout(timeout);
      if (this._socket !== socket) return;
      this._socket = null;
      this._rejectPending(new Error(`connection closed (${event.code})`));
      if (TERMINAL_CLOSE_CODES.has(event.code)) {
        this._setState("closed", { code: event.code, reason: event.reason });
        return;
      }
      if (!welcomed) {
        this._socketFailed(true);
        return;
      }
      this._scheduleReconnect({ code: event.code, reason: event.reason });
    };
  }

  /** A WebSocket that never opened: after a few, fall back to SSE. */
  _socketFailed(closed) {
    this._wsFailures += 1;
    const fallback =
      this._wsFailures >= this._options.wsFailuresBeforeFallback &&
      this._transportIndex + 1 < this._options.transports.length &&
      typeof EventSource !== "undefined";
    if (fallback) {
      this._transportIndex += 1;
      this._emit("error", { error: new Error("WebSocket unavailable, falling back to SSE") });
    }
    this._scheduleReconnect({ reason: closed ? "websocket failed" : "websocket refused" });
  }

  _onSocketMessage(message) {
    if (message.id !== undefined && this._pending.has(message.id)) {
      const { resolve, reject } = this._pending.get(message.id);
      this._pending.delete(message.id);
      if (message.op === "error") reject(Object.assign(new Error(message.message), { code: message.code }));
      else resolve(message);
      if (message.op !== "subscribed") return;
    }
    if (message.op === "subscribed") {
      this._onSubscribed(message);
    } else if (message.op === "message") {
      this._onPublication(message);
    } else if (message.op === "unsubscribed" && message.id === undefined) {
      // The server took the subscription away (server API): forget it.
      this._subs.delete(message.channel);
      this._emit("unsubscribed", { channel: message.channel });
    } else if (message.op === "join" || message.op === "leave") {
      this._emit(message.op, message);
    }
  }

  _onSubscribed(message) {
    const sub = this._subs.get(message.channel);
    if (!sub) return;
    const recovered = message.recovered !== false;
    if (!recovered || sub.epoch === null) {
      sub.epoch = message.epoch;
      sub.offset = message.offset;
    }
    this._emit("subscribed", {
      channel: message.channel,
      epoch: message.epoch,
      offset: message.offset,
      recovered: message.recovered,
      missed: message.missed,
    });
  }

  _onPublication(message) {
    const sub = this._subs.get(message.channel);
    if (!sub) return;
    // Once each, in order: anything at or below what was seen is a repeat.
    if (sub.offset !== null && message.offset <= sub.offset) return;
    sub.offset = message.offset;
    const publication = { channel: message.channel, offset: message.offset, data: message.data };
    this._emit("message", publication);
    for (const callback of [...sub.callbacks]) {
      try {
        callback(message.data, publication);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  _sendSubscribe(sub, fresh) {
    const command = { op: "subscribe", channel: sub.channel };
    if (!fresh && sub.epoch !== null && sub.offset !== null) {
      command.since = { epoch: sub.epoch, offset: sub.offset };
    }
    if (this.transport !== "websocket") {
      this._reopenStream();
      return;
    }
    this._call(command).catch((error) => this._emit("error", { error, channel: sub.channel }));
  }

  _call(command) {
    if (this.transport !== "websocket") {
      return Promise.reject(new Error(`${command.op} needs the WebSocket transport`));
    }
    const socket = this._socket;
    if (!socket || socket.readyState !== WebSocket.OPEN || this._state !== "connected") {
      return Promise.reject(new Error("not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      socket.send(JSON.stringify({ ...command, id }));
    });
  }

  _rejectPending(error) {
    for (const { reject } of this._pending.values()) reject(error);
    this._pending.clear();
  }

  // ---- SSE ----

  _streamUrl() {
    const params = new URLSearchParams();
    const cursor = [];
    for (const sub of this._subs.values()) {
      params.append("channel", sub.channel);
      cursor.push(sub.epoch !== null && sub.offset !== null ? `${sub.epoch}-${sub.offset}` : "");
    }
    if (cursor.some((part) => part !== "")) params.set("cursor", cursor.join("."));
    if (this._token) params.set("token", this._token);
    return `${this._http}/sse?${params}`;
  }

  _openStream() {
    if (this._subs.size === 0) {
      // Nothing to stream yet: connected as soon as a channel is added.
      this._attempt = 0;
      this._setState("connected", {});
      return;
    }
    const source = new EventSource(this._streamUrl());
    this._source = source;
    source.addEventListener("subscribed", (event) => {
      this._attempt = 0;
      this._setState("connected", {});
      this._onSubscribed(JSON.parse(event.data));
    });
    source.addEventListener("message", (event) => this._onPublication(JSON.parse(event.data)));
    for (const name of ["join", "leave"]) {
      source.addEventListener(name, (event) => this._emit(name, JSON.parse(event.data)));
    }
    source.onerror = () => {
      if (this._source !== source) return;
      // The browser reconnects by itself (with Last-Event-ID) unless the
      // server refused; then reconnect here, with the cursor.
      if (source.readyState === EventSource.CLOSED) {
        this._source = null;
        this._scheduleReconnect({ reason: "stream closed" });
      } else {
        this._setState("connecting", { attempt: this._attempt });
      }
    };
  }

  _reopenStream() {
    if (this._source) {
      this._source.close();
      this._source = null;
    }
    if (this._state === "connected" || this._state === "connecting") this._openStream();
  }

  // ---- reconnecting ----

  _teardown() {
    if (this._socket) {
      const socket = this._socket;
      this._socket = null;
      socket.close();
    }
    if (this._source) {
      this._source.close();
      this._source = null;
    }
    this._rejectPending(new Error("connection closed"));
  }

  _scheduleReconnect(detail) {
    this._teardown();
    const { minDelay, maxDelay } = this._options;
    const ceiling = Math.min(maxDelay, minDelay * 2 ** this._attempt);
    // Half fixed, half random: spread clients out after a restart.
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this._attempt += 1;
    this._setState("disconnected", { ...detail, delay, attempt: this._attempt });
    this._emit("reconnecting", { delay, attempt: this._attempt });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }
}

export default Herald;
