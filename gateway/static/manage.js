// The voice and music pages: list the catalog (with previews), add an
// entry (a recording may be made in the browser), delete your own.
"use strict";

const page = document.body.dataset.page; // "voices" | "music"
const CFG = page === "voices"
  ? { list: "/api/voice-clone/profiles", items: "profiles", own: "custom", file: "reference_audio", play: "play_voice" }
  : { list: "/api/bgm/tracks", items: "tracks", own: "user", file: "file", play: "play_track" };

let entries = [];
let recorded = null; // a WAV Blob recorded here

function describe(x) {
  return page === "voices" ? voiceDetail(x) : `${trackDetail(x)} · ${t(x.type)}`;
}

function render() {
  const list = $("list");
  list.replaceChildren();
  if (!entries.length) list.append(el("li", {}, t("empty_list")));
  for (const x of entries) {
    const row = el("li", { "data-id": x.id }, el("span", {}, x.name, el("small", {}, describe(x))), playButton(x.preview_url, t(CFG.play, x.name)));
    if (x.type === CFG.own) {
      row.append(el("button", { type: "button", class: "secondary", "aria-label": `${t("delete")}: ${x.name}`, onclick: () => remove(x) }, t("delete")));
    }
    list.append(row);
  }
}

async function load() {
  try {
    entries = (await api(CFG.list))[CFG.items];
    render();
  } catch (e) {
    showError("form-error", e);
  }
}

async function remove(x) {
  if (!confirm(t("delete_confirm", x.name))) return;
  clearError("form-error");
  try {
    await api(`${CFG.list}/${encodeURIComponent(x.id)}`, { method: "DELETE" });
    $("form-ok").textContent = t("deleted");
    await load();
  } catch (e) {
    showError("form-error", e);
  }
}

async function add(e) {
  e.preventDefault();
  clearError("form-error");
  $("form-ok").textContent = "";
  const name = $("name").value.trim();
  if (!name) { showError("form-error", t("voice_name")); $("name").focus(); return; }
  const file = $("file").files[0] || recorded;
  if (!file) { showError("form-error", t(page === "voices" ? "recording" : "track_file")); $("file").focus(); return; }
  const form = new FormData();
  form.append("name", name);
  if (page === "voices") {
    form.append("language", $("language").value);
    form.append("gender", $("gender").value);
  } else if ($("mood").value.trim()) {
    form.append("mood", $("mood").value.trim());
  }
  form.append(CFG.file, file, file.name || "recording.wav");
  const button = $("submit");
  button.disabled = true;
  button.textContent = t("adding");
  try {
    const created = await api(CFG.list, { method: "POST", body: form });
    $("form-ok").textContent = t("added", created.name);
    $("form").reset();
    clearRecording();
    await load();
  } catch (err) {
    showError("form-error", err);
  } finally {
    button.disabled = false;
    applyText();
  }
}

// ---- recording in the browser (voices page) --------------------------------

function clearRecording() {
  recorded = null;
  if ($("recorded")) $("recorded").textContent = "";
  if ($("playback")) $("playback").hidden = true;
}

// 16-bit mono PCM WAV from decoded audio: the server takes WAV, MP3 or M4A,
// and browsers record WebM or Ogg.
function wavFrom(buffer) {
  const data = buffer.getChannelData(0);
  const rate = buffer.sampleRate;
  const out = new DataView(new ArrayBuffer(44 + data.length * 2));
  const str = (o, s) => { for (let i = 0; i < s.length; i++) out.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); out.setUint32(4, 36 + data.length * 2, true); str(8, "WAVE");
  str(12, "fmt "); out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, rate, true); out.setUint32(28, rate * 2, true); out.setUint16(32, 2, true); out.setUint16(34, 16, true);
  str(36, "data"); out.setUint32(40, data.length * 2, true);
  for (let i = 0; i < data.length; i++) out.setInt16(44 + i * 2, Math.max(-1, Math.min(1, data[i])) * 0x7fff, true);
  return new Blob([out], { type: "audio/wav" });
}

function setupRecording() {
  const button = $("record");
  if (!button) return;
  if (!navigator.mediaDevices || !window.MediaRecorder) { button.hidden = true; return; }
  let recorder = null;
  let chunks = [];
  let started = 0;
  button.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    clearError("form-error");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch {
      showError("form-error", t("no_mic"));
      return;
    }
    chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((tr) => tr.stop());
      recorder = null;
      button.dataset.t = "record";
      applyText();
      const blob = new Blob(chunks, { type: chunks[0]?.type || "audio/webm" });
      const ctx = new AudioContext();
      try {
        const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
        recorded = new File([wavFrom(audio)], "recording.wav", { type: "audio/wav" });
        $("file").value = "";
        $("recorded").textContent = t("recorded", ((Date.now() - started) / 1000).toFixed(1));
        const playback = $("playback");
        playback.src = URL.createObjectURL(recorded);
        playback.hidden = false;
      } catch (e) {
        showError("form-error", { code: "audio-unreadable" });
      } finally {
        ctx.close();
      }
    };
    started = Date.now();
    recorder.start();
    button.dataset.t = "record_stop";
    applyText();
    // The server takes up to 30 s.
    setTimeout(() => { if (recorder && recorder.state === "recording") recorder.stop(); }, 30000);
  });
}

setupLanguageToggle(render);
setupRecording();
$("file").addEventListener("change", clearRecording);
$("form").addEventListener("submit", add);
load();
