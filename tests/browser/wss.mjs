// Node's `ws` client over wss:// for tests/wss_clients.rs: trusts the CA in
// CA_FILE (and nothing else), opens URL, subscribes to CHANNEL and prints
// every message it receives as one line; errors as {"error": ...}.
//
//   node tests/browser/wss.mjs URL CA_FILE CHANNEL
import { readFileSync } from "node:fs";
import WebSocket from "ws";

const [url, caFile, channel] = process.argv.slice(2);
const ws = new WebSocket(url, { ca: readFileSync(caFile) });
const line = (text) => process.stdout.write(`${text}\n`);
ws.on("open", () => {
  const socket = ws._socket;
  line(JSON.stringify({ open: true, protocol: socket.getProtocol(), alpn: socket.alpnProtocol }));
  ws.send(JSON.stringify({ op: "subscribe", id: 1, channel }));
});
ws.on("message", (data) => line(data.toString()));
ws.on("error", (error) => line(JSON.stringify({ error: String(error) })));
ws.on("close", (code) => line(JSON.stringify({ closed: code })));
