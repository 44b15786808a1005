// The page of BR-1 (browser.test.js): Laravel Echo with pusher-js as a
// Laravel app's resources/js/echo.js sets it up (README.md, "Coming from
// Pusher, Soketi or Reverb"), with herald-pusher.js attached. It records
// what it sees into window.results; the test reads it from there.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const results = (window.results = {
    states: [],
    events: [],
    here: null,
    joining: [],
    leaving: [],
    whispers: [],
    subscribed: [],
    errors: [],
    herald: [],
  });

  // The options of README.md's resources/js/echo.js, with the values of .env.
  const echo = new Echo.default({
    broadcaster: "reverb",
    key: params.get("key"),
    wsHost: params.get("wsHost"),
    wsPort: Number(params.get("wsPort")),
    wssPort: Number(params.get("wsPort")),
    forceTLS: false,
    enabledTransports: ["ws", "wss"],
    // authEndpoint /broadcasting/auth and /broadcasting/user-auth: Echo's defaults, this origin.
    bearerToken: params.get("user"),
  });
  window.echo = echo;
  const recovery = HeraldPusher.attach(echo);
  recovery.on("subscribed", (event) => results.herald.push(event));
  window.recovery = recovery;

  const pusher = echo.connector.pusher;
  pusher.connection.bind("state_change", ({ current }) => results.states.push(current));
  const track = (channel) => {
    channel.subscribed(() => results.subscribed.push(channel.name));
    channel.error((error) => results.errors.push({ channel: channel.name, error }));
    return channel;
  };

  track(echo.channel("news")).listen(".Published", (data) => results.events.push({ channel: "news", data }));
  track(echo.private("orders.1")).listen(".OrderShipped", (data) =>
    results.events.push({ channel: "private-orders.1", data }),
  );
  track(echo.join("room.1"))
    .here((members) => (results.here = members))
    .joining((member) => results.joining.push(member))
    .leaving((member) => results.leaving.push(member))
    .listenForWhisper("typing", (data, metadata) => results.whispers.push({ data, metadata }));

  window.whisper = (data) => echo.join("room.1").whisper("typing", data);
})();
