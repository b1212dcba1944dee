// tutti studio, the operator view: the fleet (Operator.ListWorkers) and the backlog, tenants'
// shares and failures (Operator.GetQueues), refreshed every two seconds while shown. Uses the
// helpers of studio.js.
"use strict";

function cells(tr, values) {
  for (const v of values) {
    const td = document.createElement("td");
    td.textContent = String(v);
    tr.append(td);
  }
}

const ago = (t) => (t ? `${Math.max(0, Math.round((Date.now() - new Date(t)) / 1000))} s ago` : "-");
const klass = (c) => short(c || "PRIORITY_STANDARD").replace(/^priority_/, "");
const minutes = (s) => (s % 60 === 0 ? `${s / 60} min` : `${s} s`);

function workerRow(x) {
  const tr = document.createElement("tr");
  tr.dataset.worker = x.name;
  tr.dataset.state = x.gone ? "gone" : x.draining ? "draining" : "live";
  const cpf = x.chunks_per_forward ? Number(x.chunks_per_forward).toFixed(1) : "-";
  cells(tr, [
    x.name, tr.dataset.state, x.device || "-", (x.stages || []).join(", "),
    `${x.denoise_in_use || 0}/${x.denoise_slots || 0}`, `${x.vocode_in_use || 0}/${x.vocode_slots || 0}`,
    `${x.express_in_use || 0}/${x.express_slots || 0}`, x.held_latents || 0, cpf, ago(x.last_heartbeat),
    (x.tasks || []).map((t) => `${t.job_id.slice(0, 8)}#${t.chunk || 0} ${t.stage}`).join(", ") || "-",
  ]);
  tr.children[2].className = "device";
  if (x.gone) tr.title = "gone: no heartbeat within the worker timeout";
  return tr;
}

function listItem(list, text) {
  const li = document.createElement("li");
  li.textContent = text;
  list.append(li);
}

async function refreshOperator() {
  try {
    const [w, q] = await Promise.all([api("/api/operator/workers"), api("/api/operator/queues")]);
    $("#operator-error").textContent = "";
    const wb = $("#workers tbody");
    wb.replaceChildren(...(w.workers || []).map(workerRow));
    if (!(w.workers || []).length) wb.innerHTML = '<tr><td colspan="11">No worker has sent a heartbeat.</td></tr>';
    const live = (w.workers || []).filter((x) => !x.gone).length;
    $("#workers-summary").textContent =
      `${live} live, ${(w.workers || []).length - live} gone (no heartbeat for ${w.worker_timeout_seconds || 0} s)`;
    $("#jobs-summary").textContent = `${q.jobs_queued || 0} jobs queued, ${q.jobs_running || 0} running`;
    const qb = $("#queues tbody");
    qb.textContent = "";
    for (const x of q.queues || []) {
      const tr = document.createElement("tr");
      cells(tr, [x.stage, klass(x.class), x.pending || 0, x.in_flight || 0, `${(x.oldest_wait_seconds || 0).toFixed(1)} s`]);
      qb.append(tr);
    }
    if (!(q.queues || []).length) qb.innerHTML = '<tr><td colspan="5">Nothing waiting.</td></tr>';
    $("#shares-window").textContent = minutes(q.share_window_seconds || 300);
    const sb = $("#shares tbody");
    sb.textContent = "";
    for (const x of q.shares || []) {
      const tr = document.createElement("tr");
      tr.dataset.tenant = x.tenant;
      cells(tr, [x.tenant, klass(x.class), (x.weight || 0).toFixed(1),
        `${Math.round(100 * (x.fair_share || 0))}%`, `${Math.round(100 * (x.share || 0))}%`, x.tasks_done || 0,
        `${(x.work_seconds || 0).toFixed(1)} s`]);
      sb.append(tr);
    }
    if (!(q.shares || []).length) sb.innerHTML = '<tr><td colspan="7">No work finished in the window.</td></tr>';
    const fl = $("#failures");
    fl.textContent = "";
    for (const f of q.failures || []) {
      listItem(fl, `job ${f.job_id.slice(0, 8)} (${f.tenant}) ${f.code}: ${f.message} · ${ago(f.at)}`);
    }
    if (!fl.children.length) listItem(fl, "None.");
    const dl = $("#failed-tasks");
    dl.textContent = "";
    for (const t of q.failed_tasks || []) {
      const what = t.state === "failed" ? "out of attempts" : "retry waiting";
      listItem(dl, `task ${t.job_id.slice(0, 8)}#${t.chunk || 0} ${t.stage} attempt ${t.attempt || 0} on ${t.worker || "-"} [${what}]: ${t.error} · ${ago(t.at)}`);
    }
    if (!dl.children.length) listItem(dl, "None.");
    const letters = $("#dead-letters");
    letters.textContent = "";
    for (const d of q.dead_letters || []) {
      listItem(letters, `from ${d.queue}, refused by ${d.refused_by} (${count(d.size_bytes)} bytes, ${ago(d.at)}): ${d.error}`);
    }
    if (!letters.children.length) listItem(letters, "None.");
    $("#dead-waiting").textContent = String(count(q.dead_letters_waiting));
    const replays = $("#replays");
    replays.textContent = "";
    for (const r of q.replays || []) {
      listItem(replays, `${count(r.messages)} to ${r.queue} by ${r.replayed_by} (${count(r.size_bytes)} bytes, ${ago(r.at)})`);
    }
    if (!replays.children.length) listItem(replays, "None.");
  } catch (e) {
    $("#operator-error").textContent = e.message;
  }
}

// Once their cause is fixed, dead letters go back on the queues they came from.
$("#replay-dead").addEventListener("click", async () => {
  const status = $("#replay-status");
  status.textContent = "replaying…";
  try {
    const r = await api("/api/operator/dead-letters/replay", { method: "POST", body: {} });
    status.textContent = `${count(r.replayed)} replayed, ${count(r.left)} left`;
    refreshOperator();
  } catch (e) {
    status.textContent = e.message;
  }
});

refreshers.operator = refreshOperator;
