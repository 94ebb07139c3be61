// The page in a real browser: Debian's Chromium driven by Playwright.
// Started by gateway/tests/it/browser.rs against a running stack:
//   TAYORI_URL   the gateway's page
//   FIXTURES     the directory with astronaut.png
//   DATA_DIR     the stack's catalog directory (sample voice and music files)
//   ARTIFACTS    where screenshots and the downloaded video go
// Exits non-zero with a message on the first check that fails.
import { chromium } from "playwright-core";
import { writeFileSync, readFileSync, statSync, existsSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";

const url = process.env.TAYORI_URL;
const fixtures = process.env.FIXTURES;
const data = process.env.DATA_DIR;
const out = process.env.ARTIFACTS;
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s]`, ...a);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    // A fake microphone for the recording check.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
  ],
});

let page;
const shot = async (name, p = page) => p.screenshot({ path: join(out, `${name}.png`), fullPage: true });
const problems = [];

try {
  const context = await browser.newContext({ locale: "en-US", viewport: { width: 1000, height: 900 }, acceptDownloads: true });
  await context.grantPermissions(["microphone"]);
  page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console error: ${m.text()}`); });

  // ---- the form, in English (Accept-Language en-US) ----
  await page.goto(url);
  assert.equal(await page.getAttribute("html", "lang"), "en");
  await page.waitForSelector("#voices input[value=en_joe_male]");
  await page.waitForSelector("#tracks input[value=celebration_gentle]");
  assert.equal(await page.textContent("#submit"), "Make the video");
  log("page loaded with the catalog");

  // Every voice and track has a preview that plays (a redirect to S3).
  const previews = await page.evaluate(async () => {
    const res = [];
    for (const u of ["/api/voice-clone/profiles/en_joe_male/preview", "/api/bgm/tracks/celebration_gentle/preview"]) {
      const r = await fetch(u);
      res.push([r.status, r.headers.get("content-type"), (await r.arrayBuffer()).byteLength]);
    }
    return res;
  });
  for (const [status, type, bytes] of previews) {
    assert.equal(status, 200);
    assert.match(type, /^audio\//);
    assert.ok(bytes > 1000, `preview of ${bytes} bytes`);
  }
  await page.click("#voices .choice:has(input[value=en_joe_male]) button.play");
  log("previews fetched and played");

  // ---- error paths: a text file as the photo ----
  await page.setInputFiles("#image", { name: "note.txt", mimeType: "text/plain", buffer: Buffer.from("not a photo") });
  await page.waitForSelector("#photo-error:not([hidden])");
  assert.match(await page.textContent("#photo-error"), /not a photo tayori can use/);
  await shot("01-error-text-file");
  // Text that claims to be a PNG passes the page and the S3 policy (which
  // only knows the declared type), and is refused by the server's check.
  await page.setInputFiles("#image", { name: "fake.png", mimeType: "image/png", buffer: Buffer.from("still not a photo") });
  await page.waitForFunction(() => !document.getElementById("photo-error").hidden, null, { timeout: 30000 });
  assert.match(await page.textContent("#photo-error"), /not a photo tayori can use/);
  await shot("02-error-fake-png");
  log("a text file is refused with words, by the page and by the server");

  // ---- the real photo, dropped on the page, straight to S3, then its people ----
  const b64 = readFileSync(join(fixtures, "astronaut.png")).toString("base64");
  const dropped = await page.evaluateHandle((data) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], "astronaut.png", { type: "image/png" }));
    return dt;
  }, b64);
  await page.dispatchEvent("#drop", "dragover", { dataTransfer: dropped });
  assert.ok(await page.$eval("#drop", (d) => d.classList.contains("over")), "the drop zone lights up");
  await page.dispatchEvent("#drop", "drop", { dataTransfer: dropped });
  await page.waitForFunction(() => /person found/.test(document.getElementById("photo-status").textContent), null, { timeout: 60000 });
  assert.ok(await page.isHidden("#photo-error"));
  // The person's preview (from S3) is shown, chosen.
  await page.waitForFunction(() => {
    const img = document.querySelector("#people .person img");
    return img && img.complete && img.naturalWidth > 0;
  }, null, { timeout: 10000 });
  assert.ok(await page.isChecked("#person-0"));
  log("photo dropped and uploaded to S3; people found:", await page.textContent("#photo-status"));

  // The voice list follows the message's language as it is typed.
  await page.fill("#message", "お誕生日おめでとう、Tomさん！🎉");
  await page.waitForSelector("#voices[data-language=ja]");
  const jaVoices = await page.locator("#voices input").evaluateAll((xs) => xs.map((x) => x.value));
  assert.ok(jaVoices.length >= 5 && jaVoices.every((v) => v.startsWith("ja_")), `Japanese message: ${jaVoices}`);
  assert.ok(await page.isChecked("#voice_profile_id-ja_alpha_female"), "the neural Japanese voice is the default");
  assert.match(await page.textContent("#voices-note"), /Japanese/);
  await page.fill("#message", "Happy birthday! Thank you for everything.");
  await page.waitForSelector("#voices[data-language=en]");
  const enVoices = await page.locator("#voices input").evaluateAll((xs) => xs.map((x) => x.value));
  assert.deepEqual(enVoices.sort(), ["en_joe_male", "en_slt_female"], `English message: ${enVoices}`);
  log("voices for a Japanese message:", jaVoices.join(" "), "; for an English one:", enVoices.join(" "));

  assert.equal(await page.textContent("#count"), "41 / 500");
  await page.check("#voice_profile_id-en_joe_male");
  await page.check("#bgm_id-celebration_gentle");
  await page.selectOption("#resolution", "512x910");
  await shot("03-form-filled");

  // A busy server (503 with Retry-After, as the gateway answers when its
  // queue is full) is said in words with the wait, next to the button.
  await page.route("**/api/video/generate", (route) => route.fulfill({
    status: 503,
    headers: { "Retry-After": "30", "Content-Type": "application/json" },
    body: JSON.stringify({ error: { code: "server-busy", message: "The server is busy (1000 videos waiting). Try again in 30 s." } }),
  }));
  await page.click("#submit");
  await page.waitForSelector("#form-error:not([hidden])");
  assert.equal(await page.textContent("#form-error"), "The server is busy. Please try again in 30 s.");
  assert.ok(await page.isEnabled("#submit"), "the button is usable again");
  await page.unroute("**/api/video/generate");
  log("a busy server is said in words, with the wait");

  // ---- submit, watch the steps, reload in the middle ----
  await page.click("#submit");
  await page.waitForSelector("#job:not([hidden])");
  const seen = new Set();
  const watch = async (until, limitMs) => {
    const end = Date.now() + limitMs;
    while (Date.now() < end) {
      const state = await page.evaluate(() => ({
        active: [...document.querySelectorAll("#steps li[data-state=active]")].map((li) => li.dataset.step),
        done: [...document.querySelectorAll("#steps li[data-state=done]")].map((li) => li.dataset.step),
        bar: document.getElementById("bar").value,
        result: !document.getElementById("result").hidden,
        error: document.getElementById("job-error").hidden ? "" : document.getElementById("job-error").textContent,
      }));
      state.active.forEach((s) => seen.add(s));
      if (state.error) throw new Error(`the job failed: ${state.error}`);
      if (until(state)) return state;
      await page.waitForTimeout(100);
    }
    throw new Error(`timed out; steps seen: ${[...seen]}`);
  };
  const midway = await watch((s) => s.active.length > 0, 60000);
  log("first step live:", midway.active, "bar", midway.bar);
  await shot("04-progress");
  await page.reload();
  await page.waitForSelector("#job:not([hidden])");
  log("page reloaded mid-job; following again");
  const end = await watch((s) => s.result, 240000);
  assert.equal(end.done.length, 8, `all eight steps done: ${end.done}`);
  assert.equal(end.bar, 100);
  assert.ok(seen.size >= 2, `steps seen live: ${[...seen]}`);
  log("job done; steps seen live:", [...seen].join(", "));

  // ---- the result: the video plays, the link's lifetime is shown ----
  const video = await page.waitForFunction(() => {
    const v = document.getElementById("video");
    return v.readyState >= 1 && v.duration > 0 ? { w: v.videoWidth, h: v.videoHeight, d: v.duration } : null;
  }, null, { timeout: 30000 }).then((h) => h.jsonValue());
  assert.equal(video.w, 512);
  assert.equal(video.h, 910);
  assert.ok(video.d > 2 && video.d < 30, `duration ${video.d}`);
  assert.match(await page.textContent("#expires"), /The link works until .* \(about (59|60) minutes\)/);
  log("video loaded in the page:", video);
  await shot("05-result");

  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  assert.match(download.suggestedFilename(), /^tayori-[0-9a-f]{8}\.mp4$/);
  const saved = join(out, "downloaded.mp4");
  await download.saveAs(saved);
  const head = readFileSync(saved).subarray(4, 8).toString("latin1");
  assert.equal(head, "ftyp", "the download is an MP4");
  log("downloaded", download.suggestedFilename(), statSync(saved).size, "bytes");

  // A reload after the end shows the result again; "Make another" clears it.
  await page.reload();
  await page.waitForSelector("#result:not([hidden])", { timeout: 30000 });
  await page.click("#again");
  assert.ok(await page.isHidden("#result"));

  // ---- a dropped connection: the gateway is killed while the page follows
  // a job (the test harness restarts it when told), the page reconnects ----
  // Two people this time (the photo twice, side by side): pick the second.
  await page.setInputFiles("#image", process.env.TWINS);
  await page.waitForFunction(() => /2 people found/.test(document.getElementById("photo-status").textContent), null, { timeout: 60000 });
  assert.equal(await page.locator("#people .person").count(), 2);
  await page.check("#person-1");
  const sent = new Promise((resolve) => page.on("request", (r) => {
    if (r.url().endsWith("/api/video/generate") && r.method() === "POST") resolve(r.postData());
  }));
  await page.fill("#message", "The connection will drop while this is made.");
  await page.check("#voice_profile_id-en_slt_female");
  await page.selectOption("#resolution", "512x910");
  await page.evaluate(() => {
    window.stepTexts = [];
    const step = document.getElementById("step");
    new MutationObserver(() => window.stepTexts.push(step.textContent)).observe(step, { childList: true, characterData: true, subtree: true });
  });
  await page.click("#submit");
  await page.waitForSelector("#job:not([hidden])");
  assert.match(await sent, /name="person_index"\r\n\r\n1\r\n/, "the chosen person is sent");
  console.log("DROP");
  const restarted = join(out, "gateway-restarted");
  for (let i = 0; i < 600 && !existsSync(restarted); i++) await page.waitForTimeout(100);
  assert.ok(existsSync(restarted), "the harness restarted the gateway");
  await page.waitForSelector("#result:not([hidden])", { timeout: 120000 });
  const texts = await page.evaluate(() => window.stepTexts);
  assert.ok(texts.includes("Connection lost; reconnecting…"), `the page said it was reconnecting: ${texts}`);
  assert.equal(await page.textContent("#step"), "Done!");
  await page.waitForFunction(() => document.getElementById("video").readyState >= 1, null, { timeout: 30000 });
  await shot("05b-after-reconnect");
  log("gateway killed and restarted mid-job: the page reconnected and shows the video");
  await page.click("#again");

  // ---- cancel: the sender's Cancel button stops the job; every submit
  // carries its own Idempotency-Key ----
  const keyed = new Promise((resolve) => page.on("request", (r) => {
    if (r.url().endsWith("/api/video/generate") && r.method() === "POST") resolve(r.headers()["idempotency-key"]);
  }));
  const answered = page.waitForResponse((r) => r.url().endsWith("/api/video/generate"));
  await page.fill("#message", "This one will be cancelled.");
  await page.click("#submit");
  const { task_id: cancelled } = await (await answered).json();
  await page.waitForSelector("#cancel:not([hidden])", { timeout: 30000 });
  await page.click("#cancel");
  await page.waitForFunction(() => document.getElementById("step").textContent === "Cancelled.", null, { timeout: 10000 });
  assert.match(await keyed, /^[0-9a-f]{32}$/, "the submit sent an Idempotency-Key");
  assert.ok(await page.isHidden("#cancel"));
  assert.ok(await page.isEnabled("#submit"), "a new video can be made");
  const revoked = await page.evaluate(async (id) => (await fetch(`/api/video/status/${id}`)).json(), cancelled);
  assert.equal(revoked.status, "REVOKED");
  await shot("05c-cancelled");
  log("cancelled from the page:", cancelled);

  // ---- keyboard: every control is reachable with Tab, focus is visible ----
  await page.goto(url);
  await page.waitForSelector("#voices input");
  const reached = new Set();
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press("Tab");
    const info = await page.evaluate(() => {
      const a = document.activeElement;
      const style = getComputedStyle(a);
      return { id: a.name || a.id || a.tagName, outline: style.outlineStyle !== "none" && style.outlineWidth !== "0px" };
    });
    reached.add(info.id);
    if (info.id === "message") assert.ok(info.outline, "focus is visible on the message box");
  }
  for (const id of ["image", "message", "voice_profile_id", "resolution", "background", "submit", "lang"]) {
    assert.ok(reached.has(id), `Tab reaches ${id}: ${[...reached]}`);
  }
  log("keyboard: reached", [...reached].length, "controls");

  // ---- Japanese: from Accept-Language, and the toggle ----
  const ja = await browser.newContext({ locale: "ja-JP", viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const phone = await ja.newPage();
  await phone.goto(url);
  assert.equal(await phone.getAttribute("html", "lang"), "ja");
  await phone.waitForSelector("#voices input");
  assert.equal(await phone.textContent("#submit"), "動画を作る");
  assert.equal(await phone.textContent("#steps li[data-step=background_removal]"), "背景を削除中...");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no sideways scrolling on a phone (${overflow} px too wide)`);
  await shot("06-phone-ja", phone);
  await phone.click("#lang");
  assert.equal(await phone.textContent("#submit"), "Make the video");
  assert.equal(await phone.textContent("#steps li[data-step=background_removal]"), "Removing the background...");
  log("Japanese from Accept-Language, English by the toggle, fits a phone");
  await ja.close();

  // ---- voices: record in the browser, add from a file, delete it ----
  await page.goto(new URL("/voices", url).href);
  await page.waitForSelector("#list li[data-id=ja_mei_female]");
  assert.equal(await page.locator("#list li[data-id=ja_mei_female] button", { hasText: "Delete" }).count(), 0, "built-in voices cannot be deleted");
  await page.click("#record");
  await page.waitForTimeout(1500);
  await page.click("#record");
  await page.waitForSelector("#playback:not([hidden])", { timeout: 10000 });
  assert.match(await page.textContent("#recorded"), /Recorded \d/);
  log("recorded from the (fake) microphone:", await page.textContent("#recorded"));
  // The recording (made into a WAV by the page) goes to the server, which
  // measures it: 1.5 s is too short, and the page says so.
  await page.fill("#name", "Too short");
  await page.click("#submit");
  await page.waitForSelector("#form-error:not([hidden])", { timeout: 60000 });
  assert.equal(await page.textContent("#form-error"), "The recording must be 3 to 30 seconds long.");
  log("the recorded WAV reached the server, which measured it as too short");
  await page.fill("#name", "Browser test voice");
  await page.selectOption("#language", "ja");
  await page.setInputFiles("#file", join(data, "voices/system/ja_mei_female.wav"));
  await page.click("#submit");
  await page.waitForFunction(() => /Added/.test(document.getElementById("form-ok").textContent), null, { timeout: 90000 });
  const added = page.locator("#list li", { hasText: "Browser test voice" });
  await added.waitFor({ timeout: 10000 });
  assert.equal(await added.count(), 1);
  await shot("07-voices");
  page.once("dialog", (d) => d.accept());
  await added.locator("button", { hasText: "Delete" }).click();
  await page.waitForFunction(() => /Deleted/.test(document.getElementById("form-ok").textContent));
  await page.locator("#list li", { hasText: "Browser test voice" }).waitFor({ state: "detached", timeout: 10000 });
  log("voice added from a recording file and deleted");

  // ---- music: add a track, delete it ----
  await page.goto(new URL("/music", url).href);
  await page.waitForSelector("#list li[data-id=celebration_upbeat]");
  await page.fill("#name", "Browser test track");
  await page.fill("#mood", "calm");
  await page.setInputFiles("#file", join(data, "bgm/system/celebration_gentle.mp3"));
  await page.click("#submit");
  await page.waitForFunction(() => /Added/.test(document.getElementById("form-ok").textContent), null, { timeout: 90000 });
  const track = page.locator("#list li", { hasText: "Browser test track" });
  await track.waitFor({ timeout: 10000 });
  assert.equal(await track.count(), 1);
  await shot("08-music");
  page.once("dialog", (d) => d.accept());
  await track.locator("button", { hasText: "Delete" }).click();
  await page.waitForFunction(() => /Deleted/.test(document.getElementById("form-ok").textContent));
  await track.waitFor({ state: "detached", timeout: 10000 });
  log("track added and deleted");

  // Script errors fail the test. The browser's own network lines are
  // expected: the 415 of the fake PNG, the 503 of the busy server, and
  // reconnects refused while the gateway was down, or cut mid-handshake
  // when the test killed it.
  const real = problems.filter((p) => !/status of (4\d\d|503)|net::ERR_CONNECTION_(REFUSED|RESET)/.test(p));
  assert.deepEqual(real, [], "no script errors in the pages");
  writeFileSync(join(out, "summary.json"), JSON.stringify({ video, steps_seen_live: [...seen], seconds: (Date.now() - t0) / 1000 }, null, 2));
  log("all browser checks passed");
} catch (e) {
  console.error("BROWSER TEST FAILED:", e.stack || e);
  if (problems.length) console.error("page problems:", problems);
  if (page) await shot("failure").catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
