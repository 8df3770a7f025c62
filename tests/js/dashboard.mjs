// Drive the mqttd dashboard (web/dashboard.html) in headless Chromium (Debian's
// /usr/bin/chromium via playwright-core; no browser download).
//
//   node dashboard.mjs URL SCREENSHOT_PATH USER_DATA_DIR
//
// Opens URL (certificate errors ignored: the test broker uses a throw-away CA), waits until
// the page shows "connected" and the tiles hold numbers, prints {"event":"ready",...} with the
// tiles' values, then waits until "Messages received" has changed (the Python test publishes
// meanwhile) and prints {"event":"changed",...}; saves a screenshot and exits 0. Errors print
// {"event":"error"} and exit 1. Timeouts are generous; the Python test sets the real limit.
import { chromium } from "playwright-core";

const [url, screenshot, userDataDir] = process.argv.slice(2);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const TILES = ["clients-connected", "msg-received", "retained", "uptime", "version", "heap",
  "store-latency", "dropped", "msg-in-rate"];

let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    ignoreHTTPSErrors: true,
    viewport: { width: 420, height: 900 }, // a phone's width
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--ignore-certificate-errors"],
  });
  const page = context.pages()[0] || (await context.newPage());
  const consoleLines = [];
  page.on("console", (msg) => consoleLines.push(msg.type() + ": " + msg.text()));
  page.on("pageerror", (error) => consoleLines.push("pageerror: " + error.message));
  await page.goto(url, { waitUntil: "load", timeout: 60000 });
  const tiles = async () => Object.fromEntries(
    await Promise.all(TILES.map(async (id) => [id, await page.locator("#" + id).textContent()])));
  try {
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 60000 });
    await page.waitForFunction(
      () => /^\d/.test(document.getElementById("clients-connected").textContent) &&
        /^\d/.test(document.getElementById("msg-received").textContent),
      null, { timeout: 60000 });
  } catch (error) {
    throw new Error(`dashboard showed no figures: ${JSON.stringify(await tiles())}; ` +
      `console: ${consoleLines.join(" | ")}`);
  }
  const before = await tiles();
  const canvases = await page.locator("canvas").count();
  say({ event: "ready", tiles: before, canvases });
  await page.waitForFunction(
    (first) => document.getElementById("msg-received").textContent !== first,
    before["msg-received"], { timeout: 60000 });
  // One more update, so the rates and charts have two readings of the new counters.
  const changedOnce = await tiles();
  await page.waitForFunction(
    (first) => document.getElementById("uptime").textContent !== first,
    changedOnce["uptime"], { timeout: 60000 });
  say({ event: "changed", tiles: await tiles() });
  await page.screenshot({ path: screenshot, fullPage: true });
  await context.close();
  process.exit(0);
} catch (error) {
  say({ event: "error", message: String(error && error.message ? error.message : error) });
  if (context) await context.close().catch(() => {});
  process.exit(1);
}
