// The operators' dashboard: reads /admin/api/overview every 2 s and draws
// it. Everything from the server is put in as text (textContent), never as
// markup: a failed job's message is a stranger's words.
"use strict";

const $ = (s) => document.querySelector(s);
const EVERY_MS = 2000;

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}

function fill(table, items, draw) {
  const body = $(`${table} tbody`);
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    draw(tr, item);
    return tr;
  });
  body.replaceChildren(...rows);
}

const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");

async function retry(taskId, button) {
  button.disabled = true;
  button.textContent = "Retrying…";
  const r = await fetch(`/admin/api/failed/${encodeURIComponent(taskId)}/retry`, {
    method: "POST",
    headers: { "X-Tayori-Admin": "1" },
  });
  const body = await r.json().catch(() => ({}));
  button.textContent = r.ok ? "Queued" : (body.error && body.error.message) || `Failed (${r.status})`;
  button.disabled = r.ok;
  if (!r.ok) setTimeout(() => { button.textContent = "Retry"; button.disabled = false; }, 4000);
  refresh();
}

function draw(o) {
  $("#updated").textContent = time(o.at);
  $("#rate").textContent = o.videos_per_minute.mean_last_10.toFixed(1);
  $("#totals").textContent = `${o.jobs.succeeded} made, ${o.jobs.failed} failed, ${o.jobs.cancelled} cancelled`;
  fill("#queues", o.queues, (tr, q) => {
    tr.dataset.stage = q.stage;
    cell(tr, q.stage); cell(tr, q.stats.waiting); cell(tr, q.stats.leased); cell(tr, q.stats.dead);
  });
  fill("#workers", o.workers, (tr, w) => {
    tr.dataset.worker = w.name;
    cell(tr, w.name); cell(tr, w.host); cell(tr, w.stages.join(", ")); cell(tr, w.version);
    cell(tr, w.jobs.map((j) => `${j.task_id.slice(0, 8)} (${j.stage})`).join(", ") || "—");
    cell(tr, time(w.seen_at));
  });
  fill("#progress", o.in_progress, (tr, j) => {
    tr.dataset.task = j.task_id;
    cell(tr, j.task_id); cell(tr, j.stage); cell(tr, j.step); cell(tr, j.percentage); cell(tr, j.worker);
  });
  $("#by-code").textContent = o.failures.by_code.map((c) => `${c.code}: ${c.count}`).join(" · ") || "None.";
  fill("#failed", o.failures.recent, (tr, f) => {
    tr.dataset.task = f.task_id;
    cell(tr, time(f.failed_at)); cell(tr, f.task_id); cell(tr, f.code); cell(tr, f.stage || "—");
    cell(tr, f.attempts); cell(tr, f.message);
    const b = document.createElement("button");
    b.type = "button";
    b.className = "secondary retry";
    b.textContent = "Retry";
    b.addEventListener("click", () => retry(f.task_id, b));
    cell(tr, "").appendChild(b);
  });
  fill("#steps", o.steps, (tr, s) => {
    cell(tr, s.step); cell(tr, s.count); cell(tr, s.mean_s.toFixed(2));
    cell(tr, s.p50_s == null ? "> 120" : s.p50_s); cell(tr, s.p95_s == null ? "> 120" : s.p95_s);
  });
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const r = await fetch("/admin/api/overview");
    if (r.status === 401 || r.status === 429) {
      $("#board").hidden = true;
      $("#logout").hidden = true;
      $("#signin").hidden = false;
      return;
    }
    if (r.ok) {
      $("#signin").hidden = true;
      $("#board").hidden = false;
      $("#logout").hidden = false;
      draw(await r.json());
    }
  } catch (e) {
    // The gateway is restarting: keep the last picture and ask again.
  }
  timer = setTimeout(refresh, EVERY_MS);
}

const signin = new URLSearchParams(location.search).get("signin");
if (signin) {
  const p = $("#signin-error");
  p.hidden = false;
  p.textContent = signin === "wait" ? "Too many wrong tokens: wait a minute." : "That is not the admin token.";
}
refresh();
