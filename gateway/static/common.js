// Shared by every tayori page: the two languages, API calls with errors
// put into words, and small helpers. Plain script, no build step.
"use strict";

const TEXT = {
  en: {
    tagline: "Turn a photo and a message into a spoken video message.",
    nav_make: "Make a video", nav_voices: "Voices", nav_music: "Music",
    lang_toggle: "日本語",
    photo: "Photo", photo_hint: "JPEG, PNG or WebP, up to 10 MB. Drop it here or choose a file.",
    photo_choose: "Choose a photo", photo_uploading: "Uploading the photo…", photo_finding: "Looking for people in the photo…",
    people: "Who should speak?", person_n: (n) => `Person ${n + 1}`,
    people_found: (n) => n === 1 ? "One person found." : `${n} people found: choose one.`,
    message: "Message", message_ph: "Happy birthday! Thank you for everything.",
    voice: "Voice", voices_for: (l) => `Voices that read ${l === "ja" ? "Japanese" : "English"}, the language of your message`, music: "Music", music_none: "No music", mood: "Mood", mood_all: "All moods",
    play: "Play", stop: "Stop", play_voice: (n) => `Play a sample of ${n}`, play_track: (n) => `Play a preview of ${n}`,
    size: "Size", size_full: "1080 × 1920 (full HD)", size_small: "512 × 910 (faster)",
    background: "Background", bg_gradient: "Soft gradient", bg_blur: "The photo, blurred", bg_white: "White",
    bg_charcoal: "Charcoal", bg_pink: "Pink", bg_sky: "Sky blue",
    submit: "Make the video", submitting: "Sending…",
    progress: "Progress", queued: "Waiting for a worker…", done: "Done!", failed: "It did not work",
    reconnecting: "Connection lost; reconnecting…",
    cancel: "Cancel", cancelled: "Cancelled.",
    result: "Your video", download: "Download the video",
    link_valid: (until, mins) => `The link works until ${until} (about ${mins} minutes).`,
    make_another: "Make another",
    lang_ja: "Japanese", lang_en: "English",
    female: "female", male: "male", other: "other",
    system: "built in", custom: "yours", user: "yours",
    delete: "Delete", delete_confirm: (n) => `Delete “${n}”?`, deleted: "Deleted.",
    voices_title: "Voices", voices_intro: "Add a voice from a recording of 3 to 30 seconds. tayori measures its pitch and pace and picks the closest built-in voice, shifted toward it: voice matching, not voice cloning.",
    voice_name: "Name", voice_lang: "Language", voice_gender: "Voice type", recording: "Recording (WAV, MP3 or M4A, 3 to 30 s)",
    record: "Record with the microphone", record_stop: "Stop recording", recorded: (s) => `Recorded ${s} s.`,
    add_voice: "Add the voice", adding: "Adding… (a worker measures the recording)", added: (n) => `Added “${n}”.`,
    music_title: "Music", music_intro: "Add a piece of music (MP3, M4A, WAV or OGG, up to 10 MB). A worker measures its length, tempo and loudness.",
    track_name: "Name", track_mood: "Mood (one word)", track_file: "Music file", add_track: "Add the music",
    no_mic: "No microphone can be used here.", empty_list: "Nothing here yet.",
    required_photo: "Please choose a photo first.", required_voice: "Please choose a voice.",
  },
  ja: {
    tagline: "写真とメッセージから、話す動画メッセージを作ります。",
    nav_make: "動画を作る", nav_voices: "声", nav_music: "音楽",
    lang_toggle: "English",
    photo: "写真", photo_hint: "JPEG・PNG・WebP、10 MB まで。ここにドロップするか、ファイルを選んでください。",
    photo_choose: "写真を選ぶ", photo_uploading: "写真をアップロード中…", photo_finding: "写真の中の人物を探しています…",
    people: "話す人を選んでください", person_n: (n) => `人物 ${n + 1}`,
    people_found: (n) => n === 1 ? "1 人見つかりました。" : `${n} 人見つかりました。1 人選んでください。`,
    message: "メッセージ", message_ph: "お誕生日おめでとう！いつもありがとう。",
    voice: "声", voices_for: (l) => `メッセージの言語（${l === "ja" ? "日本語" : "英語"}）を読める声`, music: "BGM", music_none: "BGM なし", mood: "雰囲気", mood_all: "すべて",
    play: "再生", stop: "停止", play_voice: (n) => `${n} の声を試聴`, play_track: (n) => `${n} を試聴`,
    size: "サイズ", size_full: "1080 × 1920（フル HD）", size_small: "512 × 910（速い）",
    background: "背景", bg_gradient: "やわらかいグラデーション", bg_blur: "写真をぼかす", bg_white: "白",
    bg_charcoal: "チャコール", bg_pink: "ピンク", bg_sky: "空色",
    submit: "動画を作る", submitting: "送信中…",
    progress: "進み具合", queued: "順番を待っています…", done: "できました！", failed: "うまくいきませんでした",
    cancel: "取り消す", cancelled: "取り消しました。",
    reconnecting: "接続が切れました。再接続しています…",
    result: "できあがった動画", download: "動画をダウンロード",
    link_valid: (until, mins) => `リンクの有効期限：${until}（あと約 ${mins} 分）`,
    make_another: "もう 1 本作る",
    lang_ja: "日本語", lang_en: "英語",
    female: "女性", male: "男性", other: "その他",
    system: "標準", custom: "追加した声", user: "追加した曲",
    delete: "削除", delete_confirm: (n) => `「${n}」を削除しますか？`, deleted: "削除しました。",
    voices_title: "声", voices_intro: "3〜30 秒の録音から声を追加します。声の高さと話す速さを測り、いちばん近い標準の声をそれに合わせて使います（声の合わせ込みであり、声の複製ではありません）。",
    voice_name: "名前", voice_lang: "言語", voice_gender: "声の種類", recording: "録音（WAV・MP3・M4A、3〜30 秒）",
    record: "マイクで録音", record_stop: "録音を止める", recorded: (s) => `${s} 秒録音しました。`,
    add_voice: "声を追加", adding: "追加中…（録音を測っています）", added: (n) => `「${n}」を追加しました。`,
    music_title: "音楽", music_intro: "音楽を追加します（MP3・M4A・WAV・OGG、10 MB まで）。長さ・テンポ・音量を測ります。",
    track_name: "名前", track_mood: "雰囲気（1 語）", track_file: "音楽ファイル", add_track: "音楽を追加",
    no_mic: "ここではマイクを使えません。", empty_list: "まだありません。",
    required_photo: "先に写真を選んでください。", required_voice: "声を選んでください。",
  },
};

// What went wrong, by the API's error code, in words a person understands.
const ERRORS = {
  en: {
    "image-too-large": "The photo is larger than 10 MB. Please choose a smaller one.",
    "unsupported-image-type": "That file is not a photo tayori can use. Please choose a JPEG, PNG or WebP picture.",
    "image-unreadable": "The photo could not be read. It may be damaged; please try another.",
    "image-truncated": "The photo is incomplete (the file was cut short). Please try another.",
    "image-extra-data": "The photo file has something else attached to it. Please save it again as a plain picture.",
    "image-dimensions-too-large": "The photo has too many pixels. Please use a smaller picture.",
    "no-person": "No person was found in the photo. Please use one where a face is clearly visible, looking at the camera.",
    "person-not-found": "That person is no longer in the photo. Please choose again.",
    "message-empty": "Please type a message.",
    "message-too-long": "The message is too long: at most 500 characters.",
    "unknown-voice": "That voice no longer exists. Please choose another.",
    "unknown-bgm": "That music no longer exists. Please choose another.",
    "rate-limited": (s) => `You have made many videos just now. Please try again in ${s} s.`,
    "server-busy": (s) => `The server is busy. Please try again in ${s} s.`,
    "queue-unavailable": (s) => `The server cannot take jobs right now. Please try again in ${s} s.`,
    "storage-unavailable": (s) => `File storage is not reachable right now. Please try again in ${s} s.`,
    "workers-busy": "The workers are busy. Please try again in a moment.",
    "upload-missing": "The photo did not finish uploading. Please choose it again.",
    "upload-not-found": "The uploaded photo has expired. Please choose it again.",
    "upload-rejected": "Storage refused the photo (too large, or not the type it said). Please choose another.",
    "upload-failed": "The photo could not be uploaded. Please check your connection and try again.",
    "job-timeout": "Making the video took too long. Please try again.",
    "cancel-token-invalid": "Only the browser that sent this job can cancel it.",
    "task-finished": "The job has already ended; there is nothing to cancel.",
    "idempotency-key-reused": "This request was already sent with different contents. Please send it again.",
    "idempotency-request-in-flight": (s) => `The same request is still being answered. Please try again in ${s} s.`,
    "audio-too-large": "The file is larger than 10 MB.",
    "unsupported-audio-type": "That file is not audio tayori can use.",
    "audio-unreadable": "The file could not be read as audio.",
    "reference-audio-length": "The recording must be 3 to 30 seconds long.",
    "no-voice-found": "No speaking voice was found in the recording. Please record again, a little closer to the microphone.",
    "system-entry-protected": "Built-in entries cannot be deleted.",
    "network": "The server could not be reached. Please check your connection.",
    "internal": "Something went wrong on our side. Please try again.",
  },
  ja: {
    "image-too-large": "写真が 10 MB を超えています。小さい写真を選んでください。",
    "unsupported-image-type": "このファイルは使える写真ではありません。JPEG・PNG・WebP の画像を選んでください。",
    "image-unreadable": "写真を読み込めませんでした。壊れている可能性があります。別の写真をお試しください。",
    "image-truncated": "写真のファイルが途中で切れています。別の写真をお試しください。",
    "image-extra-data": "写真のファイルに別のデータが付いています。普通の画像として保存し直してください。",
    "image-dimensions-too-large": "写真の画素数が多すぎます。小さい写真を使ってください。",
    "no-person": "写真の中に人物が見つかりませんでした。顔がはっきり写り、正面を向いている写真を使ってください。",
    "person-not-found": "選んだ人物が見つかりません。もう一度選んでください。",
    "message-empty": "メッセージを入力してください。",
    "message-too-long": "メッセージが長すぎます（500 文字まで）。",
    "unknown-voice": "その声はもうありません。別の声を選んでください。",
    "voice-language-mismatch": "メッセージの言語とこの声の言語が違います。メッセージの言語の声を選んでください。",
    "unknown-bgm": "その音楽はもうありません。別の曲を選んでください。",
    "rate-limited": (s) => `短い間にたくさん作られました。${s} 秒後にもう一度お試しください。`,
    "server-busy": (s) => `サーバーが混み合っています。${s} 秒後にもう一度お試しください。`,
    "queue-unavailable": (s) => `いまは受け付けできません。${s} 秒後にもう一度お試しください。`,
    "storage-unavailable": (s) => `ファイルの保存先に接続できません。${s} 秒後にもう一度お試しください。`,
    "workers-busy": "処理が混み合っています。少ししてからもう一度お試しください。",
    "upload-missing": "写真のアップロードが終わっていません。もう一度選んでください。",
    "upload-not-found": "アップロードした写真の期限が切れました。もう一度選んでください。",
    "upload-rejected": "写真を保存できませんでした（大きすぎるか、種類が違います）。別の写真を選んでください。",
    "upload-failed": "写真をアップロードできませんでした。接続を確かめて、もう一度お試しください。",
    "job-timeout": "動画の作成に時間がかかりすぎました。もう一度お試しください。",
    "cancel-token-invalid": "この依頼を取り消せるのは、送ったブラウザだけです。",
    "task-finished": "この依頼はもう終わっているので、取り消せません。",
    "idempotency-key-reused": "この依頼は別の内容ですでに送られています。もう一度送ってください。",
    "idempotency-request-in-flight": (s) => `同じ依頼にまだ答えているところです。${s} 秒後にもう一度お試しください。`,
    "audio-too-large": "ファイルが 10 MB を超えています。",
    "unsupported-audio-type": "このファイルは使える音声ではありません。",
    "audio-unreadable": "音声として読み込めませんでした。",
    "reference-audio-length": "録音は 3〜30 秒にしてください。",
    "no-voice-found": "録音から話し声が見つかりませんでした。マイクに少し近づいて録り直してください。",
    "system-entry-protected": "標準の項目は削除できません。",
    "network": "サーバーに接続できませんでした。接続を確かめてください。",
    "internal": "サーバー側で問題が起きました。もう一度お試しください。",
  },
};

const $ = (id) => document.getElementById(id);

// One line under a voice's or a track's name.
function voiceDetail(v) {
  return `${t(v.language === "ja" ? "lang_ja" : "lang_en")} · ${t(v.gender)} · ${t(v.type)}`;
}
function trackDetail(tr) {
  return `${tr.mood} · ${Math.round(tr.duration_seconds)} s${tr.bpm ? ` · ${tr.bpm} BPM` : ""}`;
}

// The language a message's script says it is in, by the server's rule
// (shared::text::language): kana or kanji is Japanese, Latin letters
// without them English, neither (digits, emoji) nothing.
function messageLanguage(text) {
  if (/[\u3040-\u30FF\u31F0-\u31FF\uFF66-\uFF9D\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF\u3005]/.test(text)) return "ja";
  if (/[A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F]/.test(text)) return "en";
  return null;
}

function currentLang() {
  const saved = localStorage.getItem("tayori-lang");
  if (saved === "ja" || saved === "en") return saved;
  return document.documentElement.lang === "ja" ? "ja" : "en";
}

function t(key, ...args) {
  const v = TEXT[currentLang()][key] ?? TEXT.en[key] ?? key;
  return typeof v === "function" ? v(...args) : v;
}

// A thrown API error: the code, the server's own message, the seconds to wait.
class ApiError extends Error {
  constructor(code, message, retryAfter, status) {
    super(message);
    this.code = code;
    this.retryAfter = retryAfter;
    this.status = status;
  }
}

// The words for an error: ours for known codes, else the server's message.
function explain(err) {
  const table = ERRORS[currentLang()];
  const entry = err && err.code ? table[err.code] : undefined;
  if (typeof entry === "function") return entry(err.retryAfter || 30);
  if (entry) return entry;
  if (err && err.message && !(err instanceof TypeError)) return err.message;
  return table.network;
}

// fetch + JSON, turning error answers into ApiError.
async function api(path, options = {}) {
  let r;
  try {
    r = await fetch(path, options);
  } catch (e) {
    throw new ApiError("network", e.message, 0, 0);
  }
  if (r.status === 204) return null;
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = body.error || {};
    const retry = Number(r.headers.get("Retry-After")) || 0;
    throw new ApiError(e.code || (r.status >= 500 ? "internal" : "network"), e.message || `HTTP ${r.status}`, retry, r.status);
  }
  return body;
}

// Fill every [data-t] element with its text, and [data-t-ph] placeholders.
function applyText() {
  document.documentElement.lang = currentLang();
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  for (const el of document.querySelectorAll("[data-t-ph]")) el.placeholder = t(el.dataset.tPh);
  for (const el of document.querySelectorAll("[data-t-label]")) el.setAttribute("aria-label", t(el.dataset.tLabel));
}

function setupLanguageToggle(onChange) {
  const btn = document.getElementById("lang");
  btn.addEventListener("click", () => {
    localStorage.setItem("tayori-lang", currentLang() === "ja" ? "en" : "ja");
    applyText();
    if (onChange) onChange();
  });
  applyText();
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else if (v !== false && v != null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// One shared <audio> for every play button: starting one stops the others.
const player = new Audio();
let playingButton = null;
function playButton(url, label) {
  const b = el("button", { type: "button", class: "play", "aria-label": label, "aria-pressed": "false" }, "▶");
  b.addEventListener("click", () => {
    if (playingButton === b) { player.pause(); return; }
    player.src = url;
    player.play().catch(() => {});
    if (playingButton) { playingButton.textContent = "▶"; playingButton.setAttribute("aria-pressed", "false"); }
    playingButton = b;
    b.textContent = "■";
    b.setAttribute("aria-pressed", "true");
  });
  return b;
}
player.addEventListener("pause", () => {
  if (playingButton) { playingButton.textContent = "▶"; playingButton.setAttribute("aria-pressed", "false"); }
  playingButton = null;
});
player.addEventListener("ended", () => player.dispatchEvent(new Event("pause")));

function showError(id, err) {
  const box = document.getElementById(id);
  box.textContent = typeof err === "string" ? err : explain(err);
  box.hidden = false;
}

function clearError(id) {
  const box = document.getElementById(id);
  box.textContent = "";
  box.hidden = true;
}
