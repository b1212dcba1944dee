// tutti studio, the batches view: the tenant's batches (Batches.ListBatches) with their counts,
// throughput, ETA, results and cancel, refreshed while shown; a manifest submitted by upload.
// The server reads the manifest (its one reader, the rules of `tutti batch submit`) and checks
// every row before it stores any: a file with a bad row is refused whole, each row's reason
// listed here. Uses the helpers of studio.js.
"use strict";

const BATCH_PAGE = 10;
let batchTokens = [""];
let batchPage = 0;

function seconds(s) {
  const n = Math.round(count(s));
  if (n < 90) return `${n} s`;
  if (n < 5400) return `${Math.round(n / 60)} min`;
  return `${(n / 3600).toFixed(1)} h`;
}

function batchCard(b) {
  const el = document.createElement("article");
  el.className = "batch";
  el.dataset.batchId = b.id;
  el.dataset.state = short(b.state);
  const title = document.createElement("h4");
  title.textContent = b.name || b.id;
  const state = document.createElement("p");
  state.className = "status";
  state.textContent = short(b.state);
  const total = count(b.total);
  const ended = count(b.succeeded) + count(b.failed) + count(b.cancelled) + count(b.rejected);
  const bar = document.createElement("progress");
  bar.max = Math.max(total, 1);
  bar.value = ended;
  const pct = total ? Math.round((100 * ended) / total) : 0;
  bar.setAttribute("aria-label", `${b.name || b.id}: ${ended} of ${total} items ended, ${pct}%`);
  const dl = document.createElement("dl");
  dl.className = "counts";
  for (const k of ["total", "queued", "running", "succeeded", "failed", "cancelled", "rejected"]) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.dataset.count = k;
    dd.textContent = String(count(b[k]));
    const pair = document.createElement("div");
    pair.append(dt, dd);
    dl.append(pair);
  }
  const rate = document.createElement("p");
  rate.className = "rate";
  const eta = b.eta_seconds === undefined || b.eta_seconds === null ? "unknown" : seconds(b.eta_seconds);
  rate.textContent = `${Number(b.items_per_second || 0).toFixed(2)} items/s · ETA ${eta}`;
  const actions = document.createElement("div");
  actions.className = "actions";
  if (b.results_url) {
    const link = document.createElement("a");
    link.className = "results";
    link.href = b.results_url;
    link.textContent = "Results manifest (JSONL)";
    link.download = `${(b.name || b.id).replace(/[^a-z0-9._-]+/gi, "_")}-results.jsonl`;
    actions.append(link);
  } else {
    const none = document.createElement("span");
    none.className = "muted";
    none.textContent = "results once every item has ended";
    actions.append(none);
  }
  const items = document.createElement("button");
  items.type = "button";
  items.textContent = "Items in history";
  items.setAttribute("aria-label", `Show the jobs of ${b.name || b.id} in the history`);
  items.addEventListener("click", () => {
    $("#h-label").value = `tutti.batch=${b.id}`;
    pageTokens = [""];
    show("history");
  });
  actions.append(items);
  if (!["completed", "cancelled"].includes(short(b.state))) {
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "cancel";
    cancel.textContent = "Cancel batch";
    cancel.setAttribute("aria-label", `Cancel ${b.name || b.id}`);
    cancel.addEventListener("click", async () => {
      try {
        el.replaceWith(batchCard(await api(`/api/batches/${b.id}/cancel`, { method: "POST" })));
      } catch (e) {
        $("#batches-error").textContent = "Cancel failed: " + e.message;
      }
    });
    actions.append(cancel);
  }
  // Two clicks, as for a job: the first arms the button, the second deletes every item's job.
  const del = document.createElement("button");
  del.type = "button";
  del.className = "delete";
  del.textContent = "Delete batch";
  del.setAttribute("aria-label", `Delete the jobs of ${b.name || b.id}`);
  del.addEventListener("click", async () => {
    if (del.dataset.armed !== "true") {
      del.dataset.armed = "true";
      del.textContent = "Really delete?";
      return;
    }
    try {
      const r = await api(`/api/batches/${b.id}/delete`, { method: "POST" });
      const card = batchCard(r.batch || b);
      card.dataset.deleted = "true";
      const note = document.createElement("p");
      note.className = "muted deleted-note";
      note.textContent = `Deleted: ${count(r.deleted)} jobs' audio and prompts are gone.`;
      card.append(note);
      el.replaceWith(card);
    } catch (e) {
      del.dataset.armed = "false";
      del.textContent = "Delete batch";
      $("#batches-error").textContent = "Delete failed: " + e.message;
    }
  });
  actions.append(del);
  el.append(title, state, bar, dl, rate, actions);
  return el;
}

async function loadBatches(to = batchPage) {
  const q = new URLSearchParams({ page_size: String(BATCH_PAGE) });
  if (batchTokens[to]) q.set("page_token", batchTokens[to]);
  try {
    const r = await api("/api/batches?" + q);
    $("#batches-error").textContent = "";
    batchPage = to;
    batchTokens[to + 1] = r.next_page_token || "";
    const list = $("#batches");
    // A refresh redraws the cards: keep the keyboard's place on the one it was on.
    const active = document.activeElement;
    const held = active && active.closest ? active.closest("#batches .batch") : null;
    const place = held ? [held.dataset.batchId, active.textContent] : null;
    list.replaceChildren(...(r.batches || []).map(batchCard));
    if (place) {
      const again = $$(`#batches .batch[data-batch-id="${CSS.escape(place[0])}"] button, #batches .batch[data-batch-id="${CSS.escape(place[0])}"] a`)
        .find((e) => e.textContent === place[1]);
      if (again) again.focus();
    }
    if (!(r.batches || []).length) list.innerHTML = '<p class="muted">No batches yet.</p>';
    $("#batches-page").textContent = `page ${batchPage + 1}`;
    $("#batches-newer").disabled = batchPage === 0;
    $("#batches-older").disabled = !r.next_page_token;
  } catch (e) {
    $("#batches-error").textContent = e.message;
  }
}

async function uploadManifest(ev) {
  ev.preventDefault();
  const status = $("#batch-status");
  const problems = $("#batch-problems");
  problems.textContent = "";
  $("#b-file").removeAttribute("aria-invalid");
  const file = $("#b-file").files[0];
  if (!file) {
    status.textContent = "Not submitted: choose a manifest file.";
    $("#b-file").setAttribute("aria-invalid", "true");
    return;
  }
  status.textContent = "Checking the manifest…";
  const q = new URLSearchParams({ file: file.name, name: $("#b-name").value.trim() });
  try {
    const res = await fetch("/api/batches?" + q, {
      method: "POST",
      headers: headers({ "Content-Type": "application/octet-stream" }),
      body: file,
    });
    const text = await res.text();
    let data = {};
    try { data = text ? JSON.parse(text) : {}; } catch { data = { message: text }; }
    if (!res.ok) {
      status.textContent = "Not submitted: " + (data.message || "HTTP " + res.status);
      $("#b-file").setAttribute("aria-invalid", "true");
      // In file order (the server reports rows as it settles them).
      const rows = (data.rejected_items || []).slice().sort((a, b) => count(a.line) - count(b.line));
      for (const r of rows) {
        const li = document.createElement("li");
        li.dataset.line = String(r.line || 0);
        li.textContent = `line ${r.line || "?"}${r.item_id ? ` (${r.item_id})` : ""}: ${r.error}`;
        problems.append(li);
      }
      return;
    }
    const b = data.batch || {};
    status.textContent = `Submitted ${b.name || ""}: ${count(data.accepted)} new items, ${count(data.existing)} already held.`;
    batchTokens = [""];
    await loadBatches(0);
  } catch (e) {
    status.textContent = "Not submitted: " + e.message;
  }
}

$("#batch-upload").addEventListener("submit", uploadManifest);
$("#batches-older").addEventListener("click", () => loadBatches(batchPage + 1));
$("#batches-newer").addEventListener("click", () => loadBatches(Math.max(0, batchPage - 1)));
refreshers.batches = () => loadBatches();
