// tutti studio, the usage view: the caller's own usage (Generation.GetUsage) for a period,
// grouped by model, key, day or batch, and a CSV of the table. Uses the helpers of studio.js.
"use strict";

const USAGE_COLUMNS = ["Group", "Jobs", "Succeeded", "Failed", "Cancelled", "Steps", "Audio s", "Device s", "Devices"];

function usageQuery() {
  const q = new URLSearchParams();
  const from = $("#u-from").value;
  const to = $("#u-to").value;
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  const by = $("#u-by").value;
  if (by) q.set("by", by);
  return q.toString();
}

function usageRows(totals) {
  return (totals || []).map((t) => [
    t.group || "(all)", count(t.jobs), count(t.succeeded), count(t.failed), count(t.cancelled),
    count(t.steps), Number(t.audio_seconds || 0).toFixed(1), Number(t.device_seconds || 0).toFixed(1),
    (t.devices || []).map((d) => `${d.stage}/${d.device} ${Number(d.seconds || 0).toFixed(1)} s`).join(", ") || "-",
  ]);
}

let usageLast = [];

async function loadUsage() {
  try {
    const r = await api("/api/usage?" + usageQuery());
    $("#usage-error").textContent = "";
    usageLast = usageRows(r.totals);
    const body = $("#usage tbody");
    body.textContent = "";
    for (const row of usageLast) {
      const tr = document.createElement("tr");
      tr.dataset.group = row[0];
      cells(tr, row);
      body.append(tr);
    }
    if (!usageLast.length) body.innerHTML = '<tr><td colspan="9">No job ended in this period.</td></tr>';
    $("#usage-period").textContent = `${(r.from || "").slice(0, 10)} to ${(r.to || "").slice(0, 10)} (UTC)`;
  } catch (e) {
    $("#usage-error").textContent = e.message;
  }
}

function usageCsv() {
  const quote = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v));
  const lines = [USAGE_COLUMNS, ...usageLast].map((row) => row.map(quote).join(","));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "tutti-usage.csv";
  a.click();
  URL.revokeObjectURL(a.href);
}

$("#usage-form").addEventListener("submit", (e) => {
  e.preventDefault();
  loadUsage();
});
$("#usage-csv").addEventListener("click", usageCsv);
refreshers.usage = loadUsage;
