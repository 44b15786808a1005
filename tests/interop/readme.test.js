// README.md's "Coming from Pusher, Soketi or Reverb", run as written:
// herald started with the section's config block, Laravel Echo made by its
// resources/js/echo.js block (herald-pusher.js attached as it shows) with
// the values of its .env block (host and port replaced by herald's, as
// tests/readme.rs does), and an event published by the Node SDK set up from
// those values as config/broadcasting.php sets up the PHP SDK. The test
// app of every other test (lib/harness.js APP) is the one in that .env.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import PusherServer from "pusher";
import * as h from "./lib/harness.js";

const HeraldPusher = createRequire(import.meta.url)(path.join(h.ROOT, "web/herald-pusher.js"));

/** The fenced blocks of one README section: [{lang, text}]. */
function sectionBlocks(title) {
  const readme = fs.readFileSync(path.join(h.ROOT, "README.md"), "utf8");
  const start = readme.indexOf(`\n## ${title}\n`);
  assert.ok(start >= 0, `README.md has no section "${title}"`);
  const end = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].map(([, lang, text]) => ({ lang, text }));
}

/** A .env file's values, `${NAME}` references resolved, with `overrides` applied first. */
function parseEnv(text, overrides) {
  const raw = {};
  for (const line of text.split("\n")) {
    const match = line.match(/^(\w+)=(.*)$/);
    if (match) raw[match[1]] = match[2].replace(/^"(.*)"$/, "$1");
  }
  Object.assign(raw, overrides);
  return Object.fromEntries(
    Object.entries(raw).map(([name, value]) => [name, value.replace(/\$\{(\w+)\}/g, (_, ref) => raw[ref])]),
  );
}

let herald;
after(() => {
  h.disconnectAll();
  if (herald) herald.stop();
});

test("README-1 the Pusher section's config, .env and echo.js work as written", async () => {
  const blocks = sectionBlocks("Coming from Pusher, Soketi or Reverb");
  const config = blocks.find((b) => b.lang === "toml");
  const dotenv = blocks.find((b) => b.lang === "ini" && b.text.includes("PUSHER_APP_KEY="));
  const echoJs = blocks.find((b) => b.lang === "js" && b.text.includes("new Echo("));
  assert.ok(config && dotenv && echoJs, "the section shows a config file, a .env and echo.js");

  herald = await h.startHerald({ text: config.text });
  const env = parseEnv(dotenv.text, { PUSHER_HOST: herald.host, PUSHER_PORT: String(herald.port) });
  assert.equal(env.BROADCAST_CONNECTION, "pusher");
  assert.deepEqual(
    { id: env.PUSHER_APP_ID, key: env.PUSHER_APP_KEY, secret: env.PUSHER_APP_SECRET },
    h.APP,
    "the README's app is the tests' app",
  );

  // echo.js as Vite builds it: imports resolved, import.meta.env.* replaced by strings.
  const code = echoJs.text
    .replace(/^import .*$/gm, "")
    .replace(/import\.meta\.env\.(\w+)/g, (_, name) => JSON.stringify(env[name]));
  const logged = [];
  const page = {};
  globalThis.window = page; // Echo looks for window.Pusher
  try {
    new Function("window", "Echo", "Pusher", "HeraldPusher", "console", code)(
      page,
      h.Echo,
      h.Pusher,
      HeraldPusher,
      { log: (line) => logged.push(line) },
    );
  } finally {
    delete globalThis.window;
  }
  const echo = page.Echo;
  const pusher = echo.connector.pusher;
  try {
    const got = [];
    const channel = echo.channel("readme").listen(".Hello", (data) => got.push(data));
    await h.subscribed(channel);

    // config/broadcasting.php's options: host, port, scheme → useTLS.
    const server = new PusherServer({
      appId: env.PUSHER_APP_ID,
      key: env.PUSHER_APP_KEY,
      secret: env.PUSHER_APP_SECRET,
      host: env.PUSHER_HOST,
      port: env.PUSHER_PORT,
      useTLS: env.PUSHER_SCHEME === "https",
    });
    await server.trigger("readme", "Hello", { from: "the README" });
    await h.waitFor(() => got.length === 1, "the event");
    assert.deepEqual(got, [{ from: "the README" }]);
    const recovery = HeraldPusher.attach(echo);
    await h.waitFor(() => recovery.positions().readme, "herald-pusher.js attached by the block");
    assert.deepEqual(logged, [], "nothing to reload");
  } finally {
    pusher.disconnect();
  }
});
