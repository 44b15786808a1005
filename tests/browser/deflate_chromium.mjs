// Headless Chromium's own WebSocket with permessage-deflate for
// tests/compression.rs: loads PAGE_URL (for an http origin), then from the
// page opens ECHO_URL, sends one compressible JSON message and checks that
// it comes back; then opens WS_URL, subscribes to CHANNEL and prints every
// message it receives as one line. Before each, prints the socket's
// negotiated extensions as {"extensions": ...}; errors as {"error": ...}.
// Chromium offers "permessage-deflate; client_max_window_bits" and
// compresses what it sends.
//
//   node tests/browser/deflate_chromium.mjs PAGE_URL ECHO_URL WS_URL CHANNEL
import { chromium } from "playwright-core";

const DEADLINE_MS = 20000;
const [pageUrl, echoUrl, wsUrl, channel] = process.argv.slice(2);
const line = (value) => process.stdout.write(`${typeof value === "string" ? value : JSON.stringify(value)}\n`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.exposeFunction("report", line);
  await page.goto(pageUrl);
  await page.evaluate(
    ([echoUrl, wsUrl, channel, deadline]) =>
      new Promise((resolve, reject) => {
        setTimeout(() => reject(new Error("deadline")), deadline);
        const message = JSON.stringify({
          items: Array.from({ length: 100 }, (_, id) => ({ id, text: "compressible" })),
        });
        const echo = new WebSocket(echoUrl);
        echo.onerror = () => reject(new Error("echo socket failed"));
        echo.onopen = () => {
          window.report({ extensions: echo.extensions });
          echo.send(message);
        };
        echo.onmessage = (event) => {
          window.report({ echoed: event.data === message, length: message.length });
          echo.close();
          const ws = new WebSocket(wsUrl);
          ws.onerror = () => reject(new Error("socket failed"));
          ws.onopen = () => {
            window.report({ extensions: ws.extensions });
            ws.send(JSON.stringify({ op: "subscribe", id: 1, channel }));
          };
          ws.onmessage = (event) => window.report(event.data);
          ws.onclose = () => resolve();
        };
      }),
    [echoUrl, wsUrl, channel, DEADLINE_MS * 3],
  );
} catch (error) {
  line({ error: String(error) });
} finally {
  await browser.close();
}
