// Drive the mqttd web page in headless Chromium (Debian's /usr/bin/chromium via playwright-core;
// no browser download).
//
//   node browser.mjs URL EXPECTED_PAYLOAD SCREENSHOT_PATH USER_DATA_DIR
//
// Opens URL (certificate errors ignored: the test broker uses a throw-away CA), waits until the
// page shows "connected" and "subscribed", prints {"event":"ready"} on stdout, then waits for a
// message whose payload is EXPECTED_PAYLOAD to appear in the DOM, prints it as
// {"event":"message",...}, saves a screenshot and exits 0. Errors print {"event":"error"} and
// exit 1. Timeouts are generous (the CI machine is shared); the Python test sets the real limit.
import { chromium } from "playwright-core";

const [url, expected, screenshot, userDataDir] = process.argv.slice(2);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    ignoreHTTPSErrors: true,
    viewport: { width: 420, height: 800 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--ignore-certificate-errors",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  const consoleLines = [];
  page.on("console", (msg) => consoleLines.push(msg.type() + ": " + msg.text()));
  page.on("pageerror", (error) => consoleLines.push("pageerror: " + error.message));
  await page.goto(url, { waitUntil: "load", timeout: 60000 });
  try {
    await page.waitForSelector('#status[data-state="connected"]', { timeout: 60000 });
    await page.waitForSelector('#subscription[data-state="subscribed"]', { timeout: 60000 });
  } catch (error) {
    const state = await page.locator("#status-text").textContent();
    throw new Error(`page did not connect: ${state}; console: ${consoleLines.join(" | ")}`);
  }
  say({ event: "ready", subscription: await page.locator("#subscription").textContent() });
  const item = page.locator("#messages li", { hasText: expected }).first();
  await item.waitFor({ timeout: 60000 });
  say({
    event: "message",
    topic: await item.getAttribute("data-topic"),
    qos: Number(await item.getAttribute("data-qos")),
    retained: (await item.getAttribute("data-retained")) === "true",
    payload: await item.locator(".payload").textContent(),
    endpoint: await page.locator("#endpoint").textContent(),
  });
  await page.screenshot({ path: screenshot, fullPage: true });
  await context.close();
  process.exit(0);
} catch (error) {
  say({ event: "error", message: String(error && error.message ? error.message : error) });
  if (context) await context.close().catch(() => {});
  process.exit(1);
}
