// The operators' dashboard in a real browser (Debian's Chromium, Playwright).
// Started by gateway/tests/it/admin.rs against a running stack:
//   TAYORI_URL  the gateway;  TOKEN  its admin token;  TASK_ID  a failed job
//   whose cause was mended;  WORKER  a worker's name;  ARTIFACTS  screenshots.
// Exits non-zero on the first check that fails.
import { chromium } from "playwright-core";
import { join } from "node:path";
import assert from "node:assert/strict";

const { TAYORI_URL: url, TOKEN: token, TASK_ID: task, WORKER: worker, ARTIFACTS: out } = process.env;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const problems = [];
try {
  const page = await (await browser.newContext({ locale: "en-US", viewport: { width: 1200, height: 900 } })).newPage();
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  await page.goto(`${url}/admin`);
  await page.waitForSelector("#signin:not([hidden])");
  assert.equal(await page.isVisible("#board"), false, "nothing shown before signing in");

  await page.fill("#token", "not-the-token-at-all-123");
  await Promise.all([page.waitForNavigation(), page.click("#signin button[type=submit]")]);
  await page.waitForSelector("#signin-error:not([hidden])");
  assert.match(await page.textContent("#signin-error"), /not the admin token/);

  await page.fill("#token", token);
  await Promise.all([page.waitForNavigation(), page.click("#signin button[type=submit]")]);
  await page.waitForSelector("#board:not([hidden])");
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "tayori_admin");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", JSON.stringify(cookies));
  assert.ok(!session.value.includes(token), "the cookie is not the token");

  await page.waitForSelector(`#workers tr[data-worker="${worker}"]`);
  await page.waitForSelector(`#queues tr[data-stage=render]`);
  const row = `#failed tr[data-task="${task}"]`;
  await page.waitForSelector(row);
  const text = await page.textContent(row);
  assert.match(text, /no-person/);
  assert.equal(await page.locator("#failed img").count(), 0, "a message is shown as text, never as markup");
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await page.screenshot({ path: join(out, "admin-01-failed.png"), fullPage: true });

  // Retry from the dashboard: the row goes, and the made count goes up,
  // without reloading the page.
  const before = await page.textContent("#totals");
  await page.click(`${row} button.retry`);
  await page.waitForSelector(row, { state: "detached", timeout: 20000 });
  await page.waitForFunction((b) => document.querySelector("#totals").textContent !== b && /^1 made/.test(document.querySelector("#totals").textContent), before, { timeout: 120000 });
  await page.screenshot({ path: join(out, "admin-02-retried.png"), fullPage: true });
  console.log(`totals went from "${before}" to "${await page.textContent("#totals")}"`);

  await Promise.all([page.waitForNavigation(), page.click("#logout button")]);
  await page.waitForSelector("#signin:not([hidden])");
  assert.deepEqual(problems, []);
  console.log("ADMIN OK");
} finally {
  await browser.close();
}
