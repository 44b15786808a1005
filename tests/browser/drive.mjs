// Drives one page of herald's demo in a real headless Chromium for tests/browser.rs.
//
//   node tests/browser/drive.mjs URL [SPKI_SHA256]
//
// Opens URL (with SPKI_SHA256, base64, Chromium trusts the certificate whose
// public key has that hash, as the tests' CA-signed one), then reads
// commands from stdin, one per line, and answers each with one JSON line on
// stdout:
//   state S           wait until the page's connection state is S
//   received N        wait until the page has received N messages; answer them
//   reconnects N      wait until the page has reconnected N times
//   states            the page's state changes so far
//   location          the page's URL and the address herald.js connects to
//   quit
// Every wait has a deadline; a failure is answered {"error": ...}.
import { chromium } from "playwright-core";
import readline from "node:readline";

const DEADLINE_MS = 20000;
const url = process.argv[2];
const spki = process.argv[3];
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const args = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"];
if (spki) args.push(`--ignore-certificate-errors-spki-list=${spki}`);
const browser = await chromium.launch({ executablePath, headless: true, args });
const page = await browser.newPage();
const consoleLines = [];
page.on("console", (message) => consoleLines.push(message.text()));
page.on("pageerror", (error) => consoleLines.push(`page error: ${error.message}`));
await page.addInitScript(() => {
  window.stateLog = [];
});
await page.goto(url);
await page.waitForFunction(() => window.herald !== undefined, null, { timeout: DEADLINE_MS });
await page.evaluate(() => {
  window.herald.on("state", (event) => window.stateLog.push(event));
});

const reply = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const wait = (fn, arg) => page.waitForFunction(fn, arg, { timeout: DEADLINE_MS, polling: 20 });

reply({ ready: true });
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const [command, arg] = line.trim().split(/\s+/);
  try {
    if (command === "state") {
      await wait((state) => window.herald.state === state, arg);
      reply({ state: arg, transport: await page.evaluate(() => window.herald.transport) });
    } else if (command === "received") {
      await wait((n) => window.received.length >= Number(n), arg);
      reply({ received: await page.evaluate(() => window.received) });
    } else if (command === "reconnects") {
      await wait((n) => window.reconnects >= Number(n), arg);
      reply({ reconnects: await page.evaluate(() => window.reconnects) });
    } else if (command === "states") {
      reply({ states: await page.evaluate(() => window.stateLog) });
    } else if (command === "location") {
      reply(await page.evaluate(() => ({ href: location.href, ws: window.herald._ws })));
    } else if (command === "quit") {
      reply({ bye: true });
      break;
    } else {
      reply({ error: `unknown command ${command}` });
    }
  } catch (error) {
    reply({ error: String(error), console: consoleLines.slice(-20) });
  }
}
await browser.close();
