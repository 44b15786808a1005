// Node's `ws` with perMessageDeflate for tests/compression.rs: opens
// ECHO_URL, sends one compressible JSON message and checks that it comes
// back; then opens WS_URL, subscribes to CHANNEL and prints every message it
// receives as one line. Before each, prints the handshake's
// Sec-WebSocket-Extensions as {"extensions": ...}; errors as {"error": ...}.
// threshold 0: ws compresses every message it sends (its default skips
// those under 1 KiB).
//
//   node tests/browser/deflate_ws.mjs ECHO_URL WS_URL CHANNEL
import WebSocket from "ws";

const [echoUrl, wsUrl, channel] = process.argv.slice(2);
const line = (value) => process.stdout.write(`${typeof value === "string" ? value : JSON.stringify(value)}\n`);

function open(url) {
  const ws = new WebSocket(url, { perMessageDeflate: { threshold: 0 } });
  ws.on("upgrade", (response) => line({ extensions: response.headers["sec-websocket-extensions"] ?? null }));
  ws.on("error", (error) => line({ error: String(error) }));
  return ws;
}

const message = JSON.stringify({
  items: Array.from({ length: 100 }, (_, id) => ({ id, text: "compressible" })),
});
const echo = open(echoUrl);
echo.on("open", () => echo.send(message));
echo.on("message", (data) => {
  line({ echoed: data.toString() === message, length: message.length });
  echo.close();
  const ws = open(wsUrl);
  ws.on("open", () => ws.send(JSON.stringify({ op: "subscribe", id: 1, channel })));
  ws.on("message", (data) => line(data.toString()));
});
