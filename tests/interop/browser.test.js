// BR-1 of the interop matrix: Laravel Echo 2.5.0 and pusher-js 8.6.0 (their
// browser builds) in a real headless Chromium, with herald-pusher.js from
// herald: private and presence channels through the page's own
// /broadcasting/auth, whispers both ways, and recovery of what was
// published while the page's WebSocket was cut.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import * as h from "./lib/harness.js";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const here = path.dirname(fileURLToPath(import.meta.url));
const modules = path.join(here, "node_modules");

const js = "text/javascript; charset=utf-8";
// Only the page's WebSocket goes through the proxy; `auth` is the page's app server.
const s = h.setup({
  proxy: true,
  browser: true,
  files: {
    "/": [
      "text/html; charset=utf-8",
      () => fs.readFileSync(path.join(here, "browser/page.html"), "utf8").replaceAll("{{herald}}", s.herald.url),
    ],
    "/page.js": [js, path.join(here, "browser/page.js")],
    "/pusher.min.js": [js, path.join(modules, "pusher-js/dist/web/pusher.min.js")],
    "/echo.iife.js": [js, path.join(modules, "laravel-echo/dist/echo.iife.js")],
  },
});
/** Headless Chromium, the Debian package (never a downloaded browser). */
function launch() {
  assert.ok(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: install the Debian package chromium (.ci/run does)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

test("BR-1 Chromium: Echo private/presence via /broadcasting/auth, whispers, recovery after a cut", async (t) => {
  const browser = await launch();
  t.after(() => browser.close());
  const page = await browser.newPage();
  const console_ = [];
  page.on("console", (message) => console_.push(message.text()));
  page.on("pageerror", (error) => console_.push(`page error: ${error.message}`));
  const results = () => page.evaluate(() => window.results);
  /** Waits, in the page, until `predicate(window.results, arg)` holds. */
  const until = async (what, predicate, arg) => {
    try {
      const expression = `window.results && (${predicate})(window.results, ${JSON.stringify(arg ?? null)})`;
      await page.waitForFunction(expression, null, { timeout: h.DEADLINE_MS * 2, polling: 20 });
    } catch (error) {
      throw new Error(`${what}: ${error.message}\nresults: ${JSON.stringify(await results())}\nconsole: ${console_.join("\n")}`);
    }
  };
  const publish = (n) =>
    Promise.all([
      s.server.trigger("news", "Published", { n }),
      s.server.trigger("private-orders.1", "OrderShipped", { n }),
    ]);
  const eventsOf = (r, channel) => r.events.filter((e) => e.channel === channel).map((e) => e.data.n);

  await page.goto(`${s.auth.url}/?key=${h.APP.key}&wsHost=${s.proxy.host}&wsPort=${s.proxy.port}&user=u1`);
  await until("three subscriptions", (r) => r.subscribed.length === 3 && r.here !== null && r.herald.length === 3);
  let r = await results();
  assert.deepEqual(r.errors, []);
  assert.deepEqual(r.here, [{ id: "u1", name: "Ada" }], "here() includes the page itself");
  assert.ok(
    s.auth.requests.some((q) => q.path === "/broadcasting/auth" && q.channel === "presence-room.1" && q.user === "u1"),
    "the page authorized through its own origin's endpoint",
  );

  // Another member, from Node: joining on the page, whispers both ways.
  const bob = h.echo(s.herald, s.auth, { user: "u2" });
  const room = bob.join("room.1");
  const bobWhispers = [];
  room.listenForWhisper("typing", (data, metadata) => bobWhispers.push({ data, metadata }));
  await h.subscribed(room);
  await until("joining(u2)", (r) => r.joining.length === 1);
  assert.deepEqual((await results()).joining, [{ id: "u2", name: "Bob" }]);
  await page.evaluate(() => window.whisper({ from: "page" }));
  await h.waitFor(() => bobWhispers.length === 1, "the page's whisper");
  assert.deepEqual(bobWhispers[0].data, { from: "page" });
  assert.equal(bobWhispers[0].metadata.user_id, "u1");
  room.whisper("typing", { from: "bob" });
  await until("Bob's whisper", (r) => r.whispers.length === 1);
  assert.deepEqual((await results()).whispers[0].data, { from: "bob" });

  // Recovery: events published while the page's connection is cut arrive after it reconnects.
  await publish(1);
  await until("n=1", (r) => r.events.length === 2);
  s.proxy.cut();
  await until("the page to notice the cut", (r) => r.states.at(-1) !== "connected");
  for (const n of [2, 3, 4]) await publish(n);
  s.proxy.restore();
  await until("the missed events", (r) => r.events.length >= 8);
  await publish(5);
  await until("n=5", (r) => r.events.length >= 10);
  r = await results();
  assert.deepEqual(eventsOf(r, "news"), [1, 2, 3, 4, 5], "public: each once, in order");
  assert.deepEqual(eventsOf(r, "private-orders.1"), [1, 2, 3, 4, 5], "private: each once, in order");
  assert.ok(r.states.filter((s) => s === "connected").length >= 2, JSON.stringify(r.states));
  for (const channel of ["news", "private-orders.1"]) {
    const resumed = r.herald.filter((e) => e.channel === channel).at(-1);
    assert.deepEqual([resumed.recovered, resumed.missed], [true, 3], `${channel}: ${JSON.stringify(resumed)}`);
  }
  const room1 = r.herald.filter((e) => e.channel === "presence-room.1").at(-1);
  assert.equal(room1.recovered, true, JSON.stringify(room1));
  assert.deepEqual(r.errors, []);
  assert.ok(!console_.some((line) => line.startsWith("page error")), console_.join("\n"));
  await page.close();
});
