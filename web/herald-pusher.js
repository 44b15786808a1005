// herald-pusher.js: recovery for pusher-js and Laravel Echo on herald. One plain script, no dependencies.
//
//   <script src="https://herald.example.com/herald-pusher.js"></script>
//   <script>
//     const recovery = HeraldPusher.attach(window.Echo);   // or a pusher-js instance
//     recovery.on("subscribed", ({ channel, recovered }) => {
//       if (recovered === false) reloadFromYourBackend(channel);
//     });
//   </script>
//
// As an ES module: `import "https://herald.example.com/herald-pusher.js"`,
// then `globalThis.HeraldPusher`; with a bundler or in Node,
// `const HeraldPusher = require("./herald-pusher.js")`.
//
// pusher-js reconnects by itself and subscribes every channel again, but
// whatever was published while it was away is lost. herald numbers every
// event it publishes per channel; attached to an unmodified pusher-js 8 (or
// the one inside Laravel Echo 2), this module remembers each channel's last
// position and adds it to the next subscribe of that channel
// (`herald_since`): herald then sends what was missed, in order and once
// each, before live events, as long as the channel's history still holds
// it (the app's `history_size` and `history_ttl_secs`). If it no longer
// does, the `subscribed` event says `recovered: false`: reload what you show
// from your backend then. Attach it right after creating the client, before
// it has subscribed. Stock clients and servers ignore all of it: on a server
// other than herald it does nothing.
//
// The protocol (herald's extension of Pusher's):
//   server: {"event":"pusher_internal:herald_subscribed","channel":C,
//            "data":"{\"epoch\":\"5e0c1a2b\",\"offset\":12}"}
//           right after subscription_succeeded, with `"recovered"` and
//           `"missed"` when the subscribe asked for recovery (also pushed
//           again if a channel's history is lost under its subscribers);
//           every event herald publishes has `"herald_offset":N`.
//   client: {"event":"pusher:subscribe","data":{"channel":C,"auth":...,
//            "herald_since":{"epoch":"5e0c1a2b","offset":12}}}
(function (root) {
  "use strict";

  var SUBSCRIBED = "pusher_internal:herald_subscribed";
  var VERSION = "1";

  /** The pusher-js instance of a pusher-js client or of a Laravel Echo (pusher or reverb broadcaster). */
  function pusherOf(target) {
    if (target && target.connector && target.connector.pusher) return target.connector.pusher;
    if (target && target.connection && typeof target.send_event === "function") return target;
    throw new TypeError(
      "HeraldPusher.attach: expected a pusher-js instance or a Laravel Echo using the pusher or reverb broadcaster",
    );
  }

  function parse(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return undefined;
    }
  }

  /**
   * Attaches recovery to a pusher-js instance or a Laravel Echo. Attaching
   * twice returns the same handle.
   * @returns {{positions(): Object, on(event: string, listener: Function): Function, detach(): void}}
   */
  function attach(target) {
    var pusher = pusherOf(target);
    if (pusher.__heraldPusher) return pusher.__heraldPusher;

    var positions = {}; // channel -> {epoch, offset}: the last event delivered
    var asked = {}; // channel -> the position a pending subscribe asked to resume from
    var listeners = { subscribed: [] };
    var transport = null;
    var ownSend = Object.prototype.hasOwnProperty.call(pusher, "send_event");
    var ownUnsubscribe = Object.prototype.hasOwnProperty.call(pusher, "unsubscribe");
    var send = pusher.send_event;
    var unsubscribe = pusher.unsubscribe;

    function emit(event, value) {
      var list = listeners[event].slice();
      for (var i = 0; i < list.length; i++) {
        try {
          list[i](value);
        } catch (e) {
          setTimeout(function () {
            throw e;
          });
        }
      }
    }

    function forget(channel) {
      delete positions[channel];
      delete asked[channel];
    }

    function subscribedTo(channel, data) {
      var since = asked[channel];
      delete asked[channel];
      if (data.recovered === true && since && since.epoch === data.epoch) {
        // The missed events follow, each moving the position on.
        positions[channel] = { epoch: since.epoch, offset: since.offset };
      } else {
        positions[channel] = { epoch: data.epoch, offset: data.offset };
      }
      var event = { channel: channel, epoch: data.epoch, offset: data.offset };
      if (typeof data.recovered === "boolean") event.recovered = data.recovered;
      if (typeof data.missed === "number") event.missed = data.missed;
      emit("subscribed", event);
    }

    // Raw frames, before pusher-js drops the fields it does not know.
    function onMessage(messageEvent) {
      var message = parse(messageEvent && messageEvent.data);
      if (!message || typeof message.channel !== "string") return;
      if (message.event === SUBSCRIBED) {
        var data = typeof message.data === "string" ? parse(message.data) : message.data;
        if (data && typeof data.epoch === "string" && typeof data.offset === "number") {
          subscribedTo(message.channel, data);
        }
        return;
      }
      var position = positions[message.channel];
      if (position && typeof message.herald_offset === "number" && message.herald_offset > position.offset) {
        position.offset = message.herald_offset;
      }
    }

    // Each connection has its own transport: listen to the current one.
    function hook() {
      var connection = pusher.connection && pusher.connection.connection;
      var next = (connection && connection.transport) || null;
      if (next === transport) return;
      if (transport) transport.unbind("message", onMessage);
      transport = next;
      if (transport) transport.bind("message", onMessage);
    }

    pusher.send_event = function (name, data, channel) {
      if (name === "pusher:subscribe" && data && typeof data.channel === "string") {
        var position = positions[data.channel];
        if (position) {
          var since = { epoch: position.epoch, offset: position.offset };
          asked[data.channel] = since;
          var copy = {};
          for (var key in data) if (Object.prototype.hasOwnProperty.call(data, key)) copy[key] = data[key];
          copy.herald_since = since;
          data = copy;
        } else {
          delete asked[data.channel];
        }
      } else if (name === "pusher:unsubscribe" && data && typeof data.channel === "string") {
        forget(data.channel);
      }
      return send.call(this, name, data, channel);
    };

    // What the app unsubscribes starts afresh if it subscribes again.
    pusher.unsubscribe = function (channelName) {
      forget(channelName);
      return unsubscribe.apply(this, arguments);
    };

    pusher.connection.bind("connected", hook);
    hook();

    var handle = {
      version: VERSION,
      /** Each channel's last position: {channel: {epoch, offset}}. */
      positions: function () {
        var copy = {};
        for (var channel in positions) {
          copy[channel] = { epoch: positions[channel].epoch, offset: positions[channel].offset };
        }
        return copy;
      },
      /** Listens to "subscribed"; returns a function that stops listening. */
      on: function (event, listener) {
        if (!listeners[event]) throw new TypeError("HeraldPusher: unknown event " + event);
        listeners[event].push(listener);
        return function () {
          var at = listeners[event].indexOf(listener);
          if (at >= 0) listeners[event].splice(at, 1);
        };
      },
      /** Restores the client as it was; positions are forgotten. */
      detach: function () {
        if (ownSend) pusher.send_event = send;
        else delete pusher.send_event;
        if (ownUnsubscribe) pusher.unsubscribe = unsubscribe;
        else delete pusher.unsubscribe;
        pusher.connection.unbind("connected", hook);
        if (transport) transport.unbind("message", onMessage);
        transport = null;
        positions = {};
        asked = {};
        delete pusher.__heraldPusher;
      },
    };
    pusher.__heraldPusher = handle;
    return handle;
  }

  var HeraldPusher = { attach: attach, version: VERSION };
  if (typeof module === "object" && module && module.exports) module.exports = HeraldPusher;
  root.HeraldPusher = HeraldPusher;
})(typeof globalThis !== "undefined" ? globalThis : this);
