// tutti studio, the webhooks view: the tenant's endpoint (Webhooks.Get/SetWebhookEndpoint),
// its signing secrets (RotateWebhookSecret) and deliveries (ListWebhookDeliveries, with a
// Redeliver button: RedeliverWebhook), refreshed every two seconds while shown. Uses the
// helpers of studio.js.
"use strict";

const WEBHOOK_EVENTS = ["QUEUED", "STARTED", "OUTPUT_READY", "SUCCEEDED", "FAILED", "CANCELLED", "BATCH_COMPLETED"];

function eventBoxes() {
  const box = $("#wh-events");
  if (box.children.length) return;
  for (const e of WEBHOOK_EVENTS) {
    const label = document.createElement("label");
    label.className = "check";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = "WEBHOOK_EVENT_" + e;
    label.append(input, " " + e.toLowerCase().replace("_", " "));
    box.append(label);
  }
}

function showEndpoint(ep) {
  eventBoxes();
  const hook = ep.webhook || null;
  if (document.activeElement !== $("#wh-url")) $("#wh-url").value = hook ? hook.url : "";
  const chosen = new Set(hook ? hook.events || [] : []);
  for (const input of $$("#wh-events input")) input.checked = chosen.has(input.value);
  const list = $("#wh-secrets");
  list.textContent = "";
  for (const s of ep.secrets || []) {
    const li = document.createElement("li");
    li.textContent = `${s.secret} · ${s.expires_at ? "valid until " + new Date(s.expires_at).toLocaleString() : "current"}`;
    list.append(li);
  }
}

function deliveryRow(d) {
  const tr = document.createElement("tr");
  tr.dataset.delivery = d.id;
  tr.dataset.state = short(d.state || "").replace(/^webhook_delivery_state_/, "");
  const answer = d.last_status ? `HTTP ${d.last_status}` : d.last_error || "-";
  cells(tr, [
    d.id.slice(0, 8), short(d.event || "").replace(/^webhook_event_/, ""),
    d.job_id ? `job ${d.job_id.slice(0, 8)}` : `batch ${(d.batch_id || "").slice(0, 8)}`,
    tr.dataset.state, d.attempts || 0, answer, ago(d.created_at),
  ]);
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = "Redeliver";
  b.className = "redeliver";
  b.addEventListener("click", async () => {
    try {
      await api(`/api/webhooks/deliveries/${d.id}/redeliver`, { method: "POST" });
      refreshWebhooks();
    } catch (e) {
      $("#webhooks-error").textContent = e.message;
    }
  });
  td.append(b);
  tr.append(td);
  return tr;
}

async function refreshWebhooks() {
  try {
    const [ep, page] = await Promise.all([api("/api/webhooks"), api("/api/webhooks/deliveries?page_size=50")]);
    $("#webhooks-error").textContent = "";
    showEndpoint(ep);
    const tb = $("#deliveries tbody");
    tb.replaceChildren(...(page.deliveries || []).map(deliveryRow));
    if (!(page.deliveries || []).length) tb.innerHTML = '<tr><td colspan="8">No deliveries yet.</td></tr>';
  } catch (e) {
    $("#webhooks-error").textContent = e.message;
  }
}

async function saveEndpoint(webhook) {
  for (const p of $$("#endpoint-form .error")) p.textContent = "";
  try {
    showEndpoint(await api("/api/webhooks", { method: "PUT", body: { webhook } }));
    $("#webhooks-error").textContent = "";
  } catch (e) {
    const slot = e.field && $(`#endpoint-form [data-error-for="${e.field.replace(/\[\d+\]$/, "")}"]`);
    if (slot) slot.textContent = e.message;
    else $("#webhooks-error").textContent = e.message;
  }
}

$("#endpoint-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const events = $$("#wh-events input").filter((i) => i.checked).map((i) => i.value);
  saveEndpoint({ url: $("#wh-url").value.trim(), events });
});
$("#wh-clear").addEventListener("click", () => saveEndpoint(null));
$("#wh-rotate").addEventListener("click", async () => {
  try {
    showEndpoint(await api("/api/webhooks/rotate", { method: "POST", body: {} }));
  } catch (e) {
    $("#webhooks-error").textContent = e.message;
  }
});

refreshers.webhooks = refreshWebhooks;
