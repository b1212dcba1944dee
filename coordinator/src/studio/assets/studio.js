// tutti studio: the page's behaviour. Every call goes to the studio's JSON gateway, which calls
// the farm's gRPC services in process; the prompt text preview comes from the server's prompt
// builder (RenderPrompt) and the models and their limits from its catalogue (ListModels), never
// from code here.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
// A proto3 JSON number (64-bit ones arrive as strings), 0 when absent.
const count = (v) => Number(v || 0);

// ---- API -----------------------------------------------------------------------------------

const KEY_STORAGE = "tutti.studio.key";
let apiKey = localStorage.getItem(KEY_STORAGE) || "";

function headers(extra = {}) {
  const h = { ...extra };
  if (apiKey) h["Authorization"] = "Bearer " + apiKey;
  return h;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || "HTTP " + status);
    this.status = status;
    this.code = body.code || "";
    this.field = body.field || null;
  }
}

async function api(path, { method = "GET", body } = {}) {
  // Every write says JSON, even without a body: the gateway refuses writes of the types a
  // page on another site could send.
  const init = { method, headers: headers(method === "GET" ? {} : { "Content-Type": "application/json" }) };
  if (body) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  const text = await res.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch { data = { message: text }; }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function watchEvents(path, onEvent, signal) {
  const res = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!res.ok) {
    let body = {};
    try { body = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, body);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

function banner(text) {
  const b = $("#banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// ---- Views ---------------------------------------------------------------------------------

// Views that follow the farm register a refresh here (batches.js, operator.js); it runs when
// the view is shown and every two seconds while it stays shown.
const refreshers = {};
let viewTimer = null;

function show(view) {
  for (const t of $$(".tab")) t.setAttribute("aria-pressed", String(t.dataset.view === view));
  for (const v of $$(".view")) v.hidden = v.id !== "view-" + view;
  clearInterval(viewTimer);
  if (view === "history") loadHistory(0);
  const refresh = refreshers[view];
  if (refresh) {
    refresh();
    viewTimer = setInterval(refresh, 2000);
  }
}

// ---- Prompt form ---------------------------------------------------------------------------

const num = (el) => (el.value.trim() === "" ? undefined : Number(el.value));
let suggestionsLoaded = false;

function chips(container, words, name) {
  container.textContent = "";
  for (const w of words) {
    const label = document.createElement("label");
    label.className = "chip";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = w;
    box.name = name;
    label.append(box, " " + w);
    container.append(label);
  }
}

function fillSuggestions(r) {
  if (suggestionsLoaded) return;
  suggestionsLoaded = true;
  for (const [id, words] of [["genres", r.genres], ["subgenres", r.subgenres], ["moods", r.moods]]) {
    $("#" + id).replaceChildren(...(words || []).map((w) => new Option(w)));
  }
  chips($("#f-instruments"), r.instruments || [], "instrument");
  chips($("#f-structure"), r.structure_words || [], "structure");
}

// The builder's fields as a structured prompt.
function structured() {
  const s = {
    genre: $("#f-genre").value,
    subgenre: $("#f-subgenre").value,
    mood: $("#f-mood").value,
    key: [$("#f-key").value, $("#f-key").value ? $("#f-mode").value : ""].join(" ").trim(),
    instruments: [
      ...$$("#f-instruments input:checked").map((b) => b.value),
      ...$("#f-instrument-extra").value.split(",").map((s) => s.trim()).filter(Boolean),
    ],
    structure: $$("#f-structure input:checked").map((b) => b.value),
  };
  if (!$("#f-tempo-unknown").checked) s.tempo_bpm = num($("#f-tempo"));
  return s;
}

const EXTENSIONS = {
  AUDIO_FORMAT_WAV: "wav",
  AUDIO_FORMAT_FLAC: "flac",
  AUDIO_FORMAT_MP3: "mp3",
  AUDIO_FORMAT_OPUS: "opus",
};

// MP3 and Opus take a bitrate; the field shows for them only.
function lossy(format) {
  return format === "AUDIO_FORMAT_MP3" || format === "AUDIO_FORMAT_OPUS";
}

function clearBuilder() {
  for (const id of ["#f-genre", "#f-subgenre", "#f-mood", "#f-instrument-extra"]) $(id).value = "";
  $("#f-tempo-unknown").checked = true;
  $("#f-key").value = "";
  $("#f-mode").value = "";
  for (const b of $$("#f-instruments input, #f-structure input")) b.checked = false;
}

// What RenderPrompt previews: the prompt as written, with the builder's fields.
// A song model's preview also shows the two texts it reads (its fields go with the request).
function renderBody() {
  const body = { prompt: $("#f-prompt").value, structured: structured() };
  const m = chosenModel();
  if (m && takes(m, "MODEL_INPUT_LYRICS")) {
    body.model = { name: m.name, version: m.version };
    body.lyrics = $("#f-lyrics").value;
    if ($("#f-language").value) body.vocal_language = $("#f-language").value;
    if ($("#f-time-signature").value) body.time_signature = Number($("#f-time-signature").value);
    const d = num($("#f-duration"));
    if (d !== undefined) body.duration_seconds = d;
  }
  return body;
}
const render = () => api("/api/prompt/render", { method: "POST", body: renderBody() });

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).split(",")[1] || "");
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

// The request the form makes. A written prompt goes as `prompt`, completed by the builder as
// the preview shows it; without one, the builder's fields go as the structured prompt. Only
// the fields the chosen model takes are sent.
async function request() {
  const m = chosenModel();
  const r = {
    duration_seconds: num($("#f-duration")),
    steps: num($("#f-steps")),
    sampler: $("#f-sampler").value,
    format: $("#f-format").value,
    variations: num($("#f-variations")),
    loudness_lufs: num($("#f-loudness")),
    priority: "PRIORITY_INTERACTIVE",
  };
  if ($("#f-prompt").value.trim()) {
    r.prompt = (await render()).prompt_text;
  } else {
    r.structured = structured();
  }
  if (takes(m, "MODEL_INPUT_NEGATIVE_PROMPT")) r.negative_prompt = $("#f-negative").value;
  if (takes(m, "MODEL_INPUT_GUIDANCE")) r.guidance_scale = num($("#f-guidance"));
  // Song models' fields.
  if (takes(m, "MODEL_INPUT_LYRICS") && $("#f-lyrics").value.trim()) r.lyrics = $("#f-lyrics").value;
  if (takes(m, "MODEL_INPUT_VOCAL_LANGUAGE") && $("#f-language").value) r.vocal_language = $("#f-language").value;
  if (takes(m, "MODEL_INPUT_LYRICS") && $("#f-time-signature").value) r.time_signature = Number($("#f-time-signature").value);
  const song = $("#f-repaint-audio").files[0];
  if (takes(m, "MODEL_INPUT_REPAINT") && song) {
    r.init_audio = await fileBase64(song);
    r.repaint_start_seconds = num($("#f-repaint-start")) ?? 0;
    const end = num($("#f-repaint-end"));
    if (end !== undefined) r.repaint_end_seconds = end;
    // A repaint is as long as its song.
    delete r.duration_seconds;
  }
  const clip = $("#f-init-audio").files[0];
  if (takes(m, "MODEL_INPUT_INIT_AUDIO") && clip) {
    r.init_audio = await fileBase64(clip);
    const strength = num($("#f-init-strength"));
    if (strength !== undefined) r.init_strength = strength;
  }
  if (lossy($("#f-format").value)) r.bitrate_kbps = num($("#f-bitrate"));
  const seed = $("#f-seed").value.trim();
  if (seed !== "") r.seed = seed;
  if (m) r.model = { name: m.name, version: $("#f-version").value };
  return r;
}

function clearErrors(scope = document) {
  for (const e of $$(".error[data-error-for]", scope)) e.textContent = "";
  for (const i of $$("[aria-invalid]", scope)) i.removeAttribute("aria-invalid");
}

// Shows a server field error next to its field; false when no field on the form has that name.
function showFieldError(field, message) {
  const base = field.replace(/\[.*$/, "");
  const slot = $(`.error[data-error-for="${CSS.escape(base)}"]`);
  if (!slot) return false;
  slot.textContent = message;
  const input = $(`[name="${CSS.escape(base)}"]`) || slot.parentElement.querySelector("input, select, textarea");
  if (input) {
    input.setAttribute("aria-invalid", "true");
    if (!slot.id) slot.id = "err-" + base.replace(/[^a-z0-9]+/gi, "-");
    input.setAttribute("aria-describedby", slot.id);
  }
  return true;
}

let previewSeq = 0;
async function renderPreview() {
  const seq = ++previewSeq;
  try {
    const r = await render();
    if (seq !== previewSeq) return;
    fillSuggestions(r);
    clearErrors($("#prompt-fields"));
    $("#preview").textContent = r.model_text
      ? r.model_text + "\n" + (r.lyric_text || "")
      : r.prompt_text || "(empty: write a prompt, or pick a genre, a mood or an instrument)";
    const added = r.added || [];
    $("#preview-added").hidden = !added.length;
    $("#preview-added").textContent = added.length ? "The builder adds: " + added.join(", ") : "";
    const c = [];
    c.push(r.tempo_bpm ? `tempo ${Math.round(r.tempo_bpm)} BPM` : "tempo unknown");
    c.push(r.key ? `key ${r.key}` : r.mode ? `mode ${r.mode}` : "key unknown");
    $("#preview-controls").textContent = c.join(" · ");
  } catch (e) {
    if (seq !== previewSeq) return;
    if (e.field && showFieldError(e.field, e.message)) return;
    $("#preview-controls").textContent = e.message;
  }
}

let previewTimer = null;
function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(renderPreview, 150);
}

// "Write into the prompt": the builder's additions become part of the written prompt, and
// the builder starts over.
async function fillPrompt() {
  try {
    const r = await render();
    if (r.prompt_text) $("#f-prompt").value = r.prompt_text;
    clearBuilder();
    renderPreview();
  } catch (e) {
    if (!(e.field && showFieldError(e.field, e.message))) $("#preview-controls").textContent = e.message;
  }
}

async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  const status = $("#form-status");
  status.textContent = "Submitting…";
  try {
    const job = await api("/api/jobs", { method: "POST", body: await request() });
    status.textContent = "Submitted.";
    if (!$("#f-seed-lock").checked) $("#f-seed").value = "";
    addJob(job, $("#jobs"));
  } catch (e) {
    if (e.field && showFieldError(e.field, e.message)) {
      status.textContent = "Not submitted: fix the field marked below.";
    } else {
      status.textContent = "Not submitted: " + e.message;
    }
  }
}

// ---- Jobs ----------------------------------------------------------------------------------

const cards = new Map();
const short = (s) => (s || "").replace(/^[A-Z]+_STATE_|^STAGE_/, "").toLowerCase();
const ended = (job) => ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"].includes(job.state);

function addJob(job, container, watch = true) {
  let card = cards.get(job.id);
  if (!card || !card.el.isConnected) {
    const el = $("#job-template").content.firstElementChild.cloneNode(true);
    el.dataset.jobId = job.id;
    card = { el, job, controller: null, drawn: new Set() };
    cards.set(job.id, card);
    $(".cancel", el).addEventListener("click", () => cancelJob(job.id));
    $(".retry", el).addEventListener("click", () => retryJob(job.id));
    $(".delete", el).addEventListener("click", (e) => deleteJob(job.id, e.currentTarget));
    $(".same", el).addEventListener("click", () => again(card.job, false));
    $(".variation", el).addEventListener("click", () => again(card.job, true));
    container.prepend(el);
  }
  update(card, job);
  if (watch && !ended(job)) follow(card);
  return card;
}

function statusLine(job) {
  const state = short(job.state);
  if (job.state === "JOB_STATE_QUEUED") {
    // GetJob and WatchJob tell a queued job its place (queue_position) and estimates.
    if (job.queue_position === undefined || job.queue_position === null) return "queued: waiting for a worker";
    const ahead = job.queue_position === 0 ? "next in the queue" : `${job.queue_position} ahead in the queue`;
    const secs = (t) => Math.max(0, Math.round((new Date(t) - Date.now()) / 1000));
    return job.estimated_start ? `queued: ${ahead} · starts in ~${secs(job.estimated_start)} s` : `queued: ${ahead}`;
  }
  if (job.state === "JOB_STATE_CANCELLED" && job.error && job.error.code === "DEADLINE_EXCEEDED") {
    return "cancelled: its deadline passed";
  }
  if (job.state === "JOB_STATE_RUNNING") return `running: ${short(job.stage)}`;
  if (job.deleted_at) return "deleted: its audio and prompt are gone";
  if (job.state === "JOB_STATE_FAILED") return `failed: ${(job.error && job.error.message) || ""}`;
  return state;
}

function update(card, job) {
  card.job = job;
  const el = card.el;
  el.dataset.state = short(job.state);
  $(".prompt-text", el).textContent = job.prompt_text || "";
  $(".status", el).textContent = statusLine(job);
  const total = job.steps_total || 0;
  const done = job.state === "JOB_STATE_SUCCEEDED" ? total : job.steps_done || 0;
  const bar = $(".bar", el);
  bar.max = Math.max(total, 1);
  bar.value = done;
  const pct = total ? Math.round((100 * done) / total) : 0;
  bar.setAttribute("aria-label", `progress ${pct}%, ${done} of ${total} steps`);
  $(".percent", el).textContent = pct + "%";
  $(".cancel", el).hidden = ended(job);
  // A failed or cancelled job runs again from where it stopped, same seed (RetryJob).
  $(".retry", el).hidden = !["JOB_STATE_FAILED", "JOB_STATE_CANCELLED"].includes(job.state);
  $(".again", el).hidden = !ended(job) || !!job.deleted_at;
  el.dataset.deleted = job.deleted_at ? "true" : "false";
  $(".delete", el).hidden = !!job.deleted_at;
  if (job.deleted_at) {
    $(".retry", el).hidden = true;
    $(".outputs", el).textContent = "";
    card.drawn.clear();
  }
  const r = job.request || {};
  $(".params pre", el).textContent = [
    `seed ${r.seed ?? "?"}`,
    `duration ${r.duration_seconds ?? "?"} s · steps ${r.steps ?? "?"} · guidance ${r.guidance_scale ?? "?"}`,
    `sampler ${short(r.sampler || "").replace(/^sampler_/, "")} · model ${job.model_version || ""}`,
    `job ${job.id}`,
  ].join("\n");
  // A deleted or expired output has no URL any more.
  for (const o of job.outputs || []) if (!o.deleted && o.url) addOutput(card, o);
}

function addOutput(card, o) {
  const idx = o.index || 0;
  if (card.drawn.has(idx)) return;
  card.drawn.add(idx);
  const fig = document.createElement("figure");
  fig.className = "output";
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.preload = "metadata";
  audio.src = o.url;
  audio.dataset.duration = String(o.duration_seconds || 0);
  const wave = document.createElement("canvas");
  wave.className = "wave";
  wave.width = 600;
  wave.height = 64;
  wave.setAttribute("role", "img");
  wave.setAttribute("aria-label", "waveform");
  const mel = document.createElement("canvas");
  mel.className = "mel";
  mel.width = 600;
  mel.height = 64;
  mel.setAttribute("role", "img");
  mel.setAttribute("aria-label", "mel spectrogram");
  const cap = document.createElement("figcaption");
  const ext = EXTENSIONS[o.format] || "wav";
  const link = document.createElement("a");
  const name = `tutti-${card.job.id.slice(0, 8)}-${idx}.${ext}`;
  link.href = o.url.startsWith("/") ? o.url + "&download=" + name : o.url;
  link.download = name;
  link.textContent = `Download ${ext.toUpperCase()}`;
  const level = o.loudness_lufs === undefined ? "" : `${o.loudness_lufs.toFixed(1)} LUFS · `;
  cap.append(`Variation ${idx + 1} · ${(o.duration_seconds || 0).toFixed(1)} s · ${level}`, link);
  fig.append(audio, wave, mel, cap);
  $(".outputs", card.el).append(fig);
  // Clicking the pictures seeks.
  for (const c of [wave, mel]) {
    c.addEventListener("click", (e) => {
      if (!audio.duration) return;
      audio.currentTime = (e.offsetX / c.clientWidth) * audio.duration;
    });
  }
  drawPictures(o.url, wave, mel).catch(() => {
    cap.append(" · (no picture: the audio could not be decoded here)");
  });
}

async function follow(card) {
  if (card.controller) return;
  card.controller = new AbortController();
  try {
    await watchEvents(`/api/jobs/${card.job.id}/events`, (name, data) => {
      if (name === "error") {
        $(".status", card.el).textContent = "watch failed: " + (data.message || "");
      } else if (data.job) {
        update(card, data.job);
      }
    }, card.controller.signal);
  } catch (e) {
    if (e.name !== "AbortError") $(".status", card.el).textContent = "watch failed: " + e.message;
  } finally {
    card.controller = null;
  }
}

async function cancelJob(id) {
  try {
    const job = await api(`/api/jobs/${id}/cancel`, { method: "POST" });
    const card = cards.get(id);
    if (card) update(card, job);
  } catch (e) {
    banner("Cancel failed: " + e.message);
  }
}

// Two clicks: the first arms the button, the second deletes.
async function deleteJob(id, button) {
  if (button.dataset.armed !== "true") {
    button.dataset.armed = "true";
    button.textContent = "Really delete?";
    return;
  }
  try {
    const job = await api(`/api/jobs/${id}/delete`, { method: "POST" });
    const card = cards.get(id);
    if (card) update(card, job);
  } catch (e) {
    button.dataset.armed = "false";
    button.textContent = "Delete";
    banner("Delete failed: " + e.message);
  }
}

async function retryJob(id) {
  try {
    const job = await api(`/api/jobs/${id}/retry`, { method: "POST" });
    const card = cards.get(id);
    if (card) {
      update(card, job);
      if (!ended(job)) follow(card);
    }
  } catch (e) {
    banner("Retry failed: " + e.message);
  }
}

async function again(job, variation) {
  const r = { ...(job.request || {}) };
  delete r.idempotency_key;
  if (variation) delete r.seed;
  try {
    addJob(await api("/api/jobs", { method: "POST", body: r }), $("#jobs"));
    show("create");
  } catch (e) {
    banner("Not submitted: " + e.message);
  }
}

// ---- History -------------------------------------------------------------------------------

// `?page_size=N` on the page's address changes the history's page size.
const PAGE_SIZE = Number(new URLSearchParams(location.search).get("page_size")) || 10;
let pageTokens = [""];
let page = 0;

async function loadHistory(to) {
  const q = new URLSearchParams({ page_size: String(PAGE_SIZE) });
  if (pageTokens[to]) q.set("page_token", pageTokens[to]);
  if ($("#h-state").value) q.set("state", $("#h-state").value);
  if ($("#h-label").value.trim()) q.set("label", $("#h-label").value.trim());
  if ($("#h-text").value.trim()) q.set("text", $("#h-text").value.trim());
  $("#history-error").textContent = "";
  try {
    const r = await api("/api/jobs?" + q);
    page = to;
    pageTokens[to + 1] = r.next_page_token || "";
    const list = $("#history");
    list.textContent = "";
    for (const job of r.jobs || []) {
      const li = document.createElement("li");
      li.dataset.jobId = job.id;
      li.dataset.state = short(job.state);
      const when = job.created_at ? new Date(job.created_at).toLocaleString() : "";
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = "Open";
      open.setAttribute("aria-label", "Open job " + job.id.slice(0, 8));
      open.addEventListener("click", () => addJob(job, $("#history-detail")));
      const text = document.createElement("span");
      text.className = "prompt-text";
      text.textContent = job.prompt_text || "";
      li.append(open, ` ${short(job.state)} · ${when} · `, text);
      list.append(li);
    }
    if (!(r.jobs || []).length) list.innerHTML = "<li>No jobs.</li>";
    $("#history-page").textContent = `page ${page + 1}`;
    $("#history-newer").disabled = page === 0;
    $("#history-older").disabled = !r.next_page_token;
  } catch (e) {
    $("#history-error").textContent = e.message;
  }
}

// ---- Start ---------------------------------------------------------------------------------

async function start() {
  for (const t of $$(".tab")) t.addEventListener("click", () => show(t.dataset.view));
  const form = $("#prompt-form");
  form.addEventListener("input", schedulePreview);
  form.addEventListener("change", schedulePreview);
  form.addEventListener("submit", submit);
  // Moving the tempo gives one; "unknown" takes it back.
  const tempo = $("#f-tempo"), slider = $("#f-tempo-slider"), unknown = $("#f-tempo-unknown");
  tempo.addEventListener("input", () => { slider.value = tempo.value; unknown.checked = false; });
  slider.addEventListener("input", () => { tempo.value = slider.value; unknown.checked = false; });
  $("#models").addEventListener("change", () => { renderVersions(); applyModel(); });
  $("#f-version").addEventListener("change", applyModel);
  $("#f-sampler").addEventListener("change", (e) => { chosenSampler = e.target.value; });
  $("#f-duration").addEventListener("input", durationHint);
  $("#builder-fill").addEventListener("click", fillPrompt);
  $("#builder-clear").addEventListener("click", () => { clearBuilder(); schedulePreview(); });
  // Whether workers can run each model changes with the fleet: re-read while the form shows.
  setInterval(() => {
    if (!$("#view-create").hidden && document.visibilityState === "visible") loadModels();
  }, 5000);
  const format = $("#f-format");
  format.addEventListener("change", () => { $("#f-bitrate-row").hidden = !lossy(format.value); });
  $("#f-seed-random").addEventListener("click", () => {
    $("#f-seed").value = String(Math.floor(Math.random() * 2 ** 31));
    $("#f-seed-lock").checked = true;
  });
  $("#history-form").addEventListener("submit", (e) => { e.preventDefault(); pageTokens = [""]; loadHistory(0); });
  $("#history-older").addEventListener("click", () => loadHistory(page + 1));
  $("#history-newer").addEventListener("click", () => loadHistory(Math.max(0, page - 1)));
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = $("#api-key").value.trim();
    localStorage.setItem(KEY_STORAGE, apiKey);
    $("#key-status").textContent = apiKey ? "key saved" : "key cleared";
    cards.clear();
    loadModels();
    $("#jobs").textContent = "";
    $("#history-detail").textContent = "";
    banner("");
    const view = ($$(".tab").find((t) => t.getAttribute("aria-pressed") === "true") || {}).dataset;
    show((view && view.view) || "create");
  });
  try {
    const info = await api("/api/info");
    $("#key-form").hidden = !info.auth_required;
    if (info.auth_required) {
      $("#api-key").value = apiKey;
      if (!apiKey) banner("This farm needs an API key: enter it above.");
    }
  } catch (e) {
    banner("The studio cannot reach its server: " + e.message);
  }
  await loadModels();
  renderPreview();
  document.body.dataset.ready = "true";
}

// After every script of the page has run (they are deferred, in order).
document.addEventListener("DOMContentLoaded", start);
