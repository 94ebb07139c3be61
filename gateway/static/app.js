// The "make a video" page: photo straight to S3 (presigned POST), people
// to pick from, voice and music with previews, live progress over the
// WebSocket (survives reloads and dropped connections), the result.
"use strict";

const MAX_BYTES = 10 * 1024 * 1024;
const PHOTO_TYPES = ["image/jpeg", "image/png", "image/webp"];
const TASK_KEY = "tayori-task";
const CANCEL_KEY = "tayori-cancel-token";

let steps = [];            // from /api/steps
let voices = [];
let tracks = [];
let photo = null;          // Promise of {uploadId, people} for the chosen photo
let personIndex = null;
let lastEvent = null;      // the newest progress event shown

// ---- photo ----------------------------------------------------------------

function choosePhoto(file) {
  clearError("photo-error");
  clearError("form-error");
  $("people-box").hidden = true;
  $("people").replaceChildren();
  personIndex = null;
  photo = null;
  if (!file) return;
  if (!PHOTO_TYPES.includes(file.type)) { showError("photo-error", { code: "unsupported-image-type" }); return; }
  if (file.size > MAX_BYTES) { showError("photo-error", { code: "image-too-large" }); return; }
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  preview.alt = file.name;
  photo = uploadPhoto(file);
  photo.catch((e) => { showError("photo-error", e); $("photo-status").textContent = ""; });
}

// Presigned POST straight to S3, then ask for the people in the photo.
async function uploadPhoto(file) {
  const status = $("photo-status");
  status.textContent = t("photo_uploading");
  const policy = await postOnce(`/api/uploads?content_type=${encodeURIComponent(file.type)}`, () => ({}));
  const form = new FormData();
  for (const [k, v] of Object.entries(policy.fields)) form.append(k, v);
  form.append(policy.file_field, file);
  let r;
  try {
    r = await fetch(policy.url, { method: "POST", body: form });
  } catch (e) {
    throw new ApiError("upload-failed", e.message, 0, 0);
  }
  if (!r.ok) {
    const xml = await r.text().catch(() => "");
    throw new ApiError(/EntityTooLarge/.test(xml) ? "image-too-large" : "upload-rejected", xml, 0, r.status);
  }
  status.textContent = t("photo_finding");
  const found = await api(policy.people_url, { method: "POST" });
  showPeople(found);
  status.textContent = t("people_found", found.people.length);
  return { uploadId: policy.upload_id, people: found.people };
}

function showPeople(found) {
  const box = $("people");
  box.replaceChildren();
  personIndex = found.default_index;
  for (const p of found.people) {
    const id = `person-${p.index}`;
    const input = el("input", { type: "radio", name: "person", id, value: String(p.index), checked: p.index === found.default_index });
    input.addEventListener("change", () => { personIndex = p.index; });
    box.append(el("label", { class: "person", for: id }, input,
      el("img", { src: p.preview_url, alt: t("person_n", p.index), loading: "lazy" }),
      el("span", {}, t("person_n", p.index))));
  }
  $("people-box").hidden = found.people.length === 0;
}

function setupPhoto() {
  $("image").addEventListener("change", (e) => choosePhoto(e.target.files[0]));
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) choosePhoto(file);
  });
}

// ---- catalog ----------------------------------------------------------------

function choice(name, value, label, detail, previewUrl, playLabel, checked) {
  const id = `${name}-${value || "none"}`;
  const input = el("input", { type: "radio", name, id, value, checked });
  const row = el("div", { class: "choice" }, input, el("label", { for: id }, label, detail ? el("small", {}, detail) : ""));
  if (previewUrl) row.append(playButton(previewUrl, playLabel));
  return row;
}

// Only the voices that can read the message (by its script); with nothing
// typed yet, all of them, the page's language first.
function renderVoices() {
  const box = $("voices");
  const chosen = box.querySelector("input:checked")?.value;
  box.replaceChildren();
  const lang = messageLanguage($("message").value);
  box.dataset.language = lang || "";
  const note = $("voices-note");
  note.hidden = !lang;
  note.textContent = lang ? t("voices_for", lang) : "";
  const page = currentLang();
  const shown = lang
    ? voices.filter((v) => v.language === lang)
    : [...voices].sort((a, b) => (a.language === page ? 0 : 1) - (b.language === page ? 0 : 1));
  const keep = shown.some((v) => v.id === chosen);
  shown.forEach((v, i) => {
    box.append(choice("voice_profile_id", v.id, v.name, voiceDetail(v), v.preview_url, t("play_voice", v.name), keep ? chosen === v.id : i === 0));
  });
}

// The voice list follows the message's language as it is typed.
let voicesFor;
function messageTyped() {
  updateCount();
  const lang = messageLanguage($("message").value);
  if (lang !== voicesFor) { voicesFor = lang; renderVoices(); }
}

function renderTracks() {
  const box = $("tracks");
  const chosen = box.querySelector("input:checked")?.value;
  const mood = $("mood").value;
  box.replaceChildren();
  box.append(choice("bgm_id", "", t("music_none"), "", null, null, chosen === ""));
  const shown = tracks.filter((tr) => !mood || tr.mood === mood);
  shown.forEach((tr, i) => {
    const checked = chosen ? chosen === tr.id : i === 0;
    box.append(choice("bgm_id", tr.id, tr.name, trackDetail(tr), tr.preview_url, t("play_track", tr.name), checked));
  });
  if (!box.querySelector("input:checked")) box.querySelector("input").checked = true;
}

function renderMoods() {
  const select = $("mood");
  const chosen = select.value;
  select.replaceChildren(new Option(t("mood_all"), ""));
  for (const m of [...new Set(tracks.map((tr) => tr.mood))].sort()) select.add(new Option(m, m));
  select.value = chosen;
}

async function loadCatalog() {
  try {
    const [v, b] = await Promise.all([api("/api/voice-clone/profiles"), api("/api/bgm/tracks")]);
    voices = v.profiles;
    tracks = b.tracks;
    renderVoices();
    renderMoods();
    renderTracks();
  } catch (e) {
    showError("form-error", e);
  }
}

// ---- progress -----------------------------------------------------------

function stepText(ev) {
  if (ev.status === "SUCCESS") return t("done");
  if (ev.status === "FAILURE") return t("failed");
  if (ev.status === "REVOKED") return t("cancelled");
  const s = steps.find((x) => x.name === ev.current_step);
  if (!s) return t("queued");
  return `${s.index} / ${steps.length}: ${s.message[currentLang()]}`;
}

function renderSteps() {
  const list = $("steps");
  list.replaceChildren();
  for (const s of steps) list.append(el("li", { "data-step": s.name }, s.message[currentLang()]));
  if (lastEvent) showEvent(lastEvent);
}

// Steps before the current one are done (the image and voice steps run at
// the same time, so "before" is by index among those seen).
const seenSteps = new Set();
function showEvent(ev) {
  lastEvent = ev;
  $("bar").value = ev.percentage;
  $("step").textContent = stepText(ev);
  if (ev.current_step && steps.some((s) => s.name === ev.current_step)) seenSteps.add(ev.current_step);
  for (const li of $("steps").children) {
    const name = li.dataset.step;
    let state = "waiting";
    if (ev.status === "SUCCESS" || (seenSteps.has(name) && name !== ev.current_step)) state = "done";
    if (name === ev.current_step && ev.status === "STARTED") state = "active";
    if (name === ev.current_step && ev.status === "FAILURE") state = "failed";
    li.dataset.state = state;
    if (state === "active") li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
  }
}

function follow(taskId, attempt = 0) {
  localStorage.setItem(TASK_KEY, taskId);
  $("job").hidden = false;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws/progress/${taskId}`);
  let ended = false;
  ws.onopen = () => { attempt = 0; };
  ws.onmessage = (e) => {
    let ev;
    try { ev = JSON.parse(e.data); } catch { return; }
    if (lastEvent && ev.seq !== undefined && lastEvent.seq !== undefined && ev.seq < lastEvent.seq && lastEvent.task_id === taskId) return;
    showEvent(ev);
    if (ev.status === "SUCCESS") { ended = true; showResult(taskId); }
    if (ev.status === "FAILURE") { ended = true; showFailure(taskId); }
    if (ev.status === "REVOKED") { ended = true; showCancelled(); }
    if (ended) localStorage.removeItem(CANCEL_KEY);
    $("cancel").hidden = ended || !localStorage.getItem(CANCEL_KEY);
  };
  ws.onclose = (e) => {
    if (ended || e.code === 1000) return;
    if (e.code === 4404) { localStorage.removeItem(TASK_KEY); $("job").hidden = true; $("submit").disabled = false; return; }
    // Dropped: reconnect; the server replays what was missed.
    $("step").textContent = t("reconnecting");
    setTimeout(() => follow(taskId, attempt + 1), Math.min(8000, 500 * 2 ** attempt));
  };
}

function showCancelled() {
  $("cancel").hidden = true;
  localStorage.removeItem(CANCEL_KEY);
  localStorage.removeItem(TASK_KEY);
  $("step").textContent = t("cancelled");
  $("submit").disabled = false;
}

// Only the sender holds the job's cancel token (kept across reloads).
async function cancelJob() {
  const taskId = localStorage.getItem(TASK_KEY);
  const token = localStorage.getItem(CANCEL_KEY);
  if (!taskId || !token) return;
  clearError("job-error");
  $("cancel").disabled = true;
  try {
    await api(`/api/video/${taskId}/cancel`, { method: "POST", headers: { "X-Cancel-Token": token } });
    showCancelled();
  } catch (e) {
    showError("job-error", e);
  } finally {
    $("cancel").disabled = false;
  }
}

async function showFailure(taskId) {
  try {
    const s = await api(`/api/video/status/${taskId}`);
    showError("job-error", s.error ? { code: s.error.code, message: s.error.message } : { code: "internal" });
  } catch (e) {
    showError("job-error", e);
  }
  $("submit").disabled = false;
}

async function showResult(taskId) {
  try {
    const r = await api(`/api/video/result/${taskId}`);
    const video = $("video");
    video.poster = r.thumbnail_url;
    video.src = r.video_url;
    $("download").href = r.download_url || r.video_url;
    const until = new Date(r.expires_at);
    const mins = Math.max(0, Math.round((until - Date.now()) / 60000));
    $("expires").textContent = t("link_valid", until.toLocaleTimeString(currentLang()), mins);
    $("result").hidden = false;
  } catch (e) {
    showError("job-error", e);
  }
  $("submit").disabled = false;
}

// ---- submit ---------------------------------------------------------------

async function submit(e) {
  e.preventDefault();
  clearError("form-error");
  const message = $("message").value;
  if (!message.trim()) { showError("form-error", { code: "message-empty" }); $("message").focus(); return; }
  if (!photo) { showError("form-error", t("required_photo")); $("image").focus(); return; }
  const voice = document.querySelector("input[name=voice_profile_id]:checked");
  if (!voice) { showError("form-error", t("required_voice")); return; }
  $("submit").disabled = true;
  $("submit").textContent = t("submitting");
  try {
    const { uploadId } = await photo;
    const form = new FormData();
    form.append("upload_id", uploadId);
    form.append("message", message);
    form.append("voice_profile_id", voice.value);
    form.append("bgm_id", document.querySelector("input[name=bgm_id]:checked")?.value || "");
    form.append("resolution", $("resolution").value);
    form.append("background", $("background").value);
    if (personIndex !== null) form.append("person_index", String(personIndex));
    const job = await postOnce("/api/video/generate", () => ({ body: form }));
    localStorage.setItem(CANCEL_KEY, job.cancel_token);
    startJob(job.task_id);
  } catch (err) {
    showError(err.code && err.code.startsWith("image") || err.code === "no-person" || err.code?.startsWith("upload") ? "photo-error" : "form-error", err);
    $("submit").disabled = false;
  } finally {
    $("submit").textContent = t("submit");
  }
}

// POST with an Idempotency-Key, sent again with the same key when the
// network fails or the first try is still being answered: a retry after a
// dropped connection never makes a second job or policy.
async function postOnce(path, options, tries = 4) {
  const key = newKey();
  for (let i = 1; ; i++) {
    try {
      return await api(path, { method: "POST", ...options(), headers: { "Idempotency-Key": key } });
    } catch (e) {
      const again = e.code === "network" || e.code === "idempotency-request-in-flight";
      if (!again || i >= tries) throw e;
      await new Promise((r) => setTimeout(r, 500 * 2 ** (i - 1)));
    }
  }
}

// 128 random bits as hex (crypto.randomUUID needs a secure context; a
// gateway on a LAN address over plain HTTP is not one).
function newKey() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

function startJob(taskId) {
  lastEvent = null;
  seenSteps.clear();
  clearError("job-error");
  $("result").hidden = true;
  $("cancel").hidden = !localStorage.getItem(CANCEL_KEY);
  renderSteps();
  follow(taskId);
  $("job").scrollIntoView({ behavior: "smooth", block: "start" });
}

function reset() {
  localStorage.removeItem(TASK_KEY);
  localStorage.removeItem(CANCEL_KEY);
  $("result").hidden = true;
  $("job").hidden = true;
  $("video").removeAttribute("src");
  $("submit").disabled = false;
  $("message").focus();
}

// ---- start ------------------------------------------------------------------

async function main() {
  setupLanguageToggle(() => { renderVoices(); renderMoods(); renderTracks(); renderSteps(); updateCount(); });
  setupPhoto();
  $("message").addEventListener("input", messageTyped);
  $("mood").addEventListener("change", renderTracks);
  $("form").addEventListener("submit", submit);
  $("again").addEventListener("click", reset);
  $("cancel").addEventListener("click", cancelJob);
  try { steps = (await api("/api/steps")).steps; } catch { steps = []; }
  renderSteps();
  await loadCatalog();
  const pending = localStorage.getItem(TASK_KEY);
  if (pending) { $("submit").disabled = true; startJob(pending); }
}

function updateCount() { $("count").textContent = `${[...$("message").value].length} / 500`; }

main();
