// tutti studio: the model picker and the form's fit to the chosen model (studio.js holds the
// page's shared helpers; the catalogue comes from the server's ListModels, never from code here).

// ---- Models --------------------------------------------------------------------------------

// The farm's catalogue (ListModels): the picker lists it, and the form shows what the chosen
// model takes. What the user typed stays when the model changes (a hidden field keeps its value
// and is not sent); the sampler chosen comes back with a model that runs it.
let catalogue = { models: [], default_model: "" };
let chosenSampler = "SAMPLER_UNSPECIFIED";
let appliedModel = "";
// The fields a model takes when the catalogue cannot be read: the ones every family takes.
const FALLBACK_INPUTS = ["MODEL_INPUT_NEGATIVE_PROMPT", "MODEL_INPUT_GUIDANCE"];
const SAMPLER_NAMES = {
  SAMPLER_FLOW_EULER: "flow Euler",
  SAMPLER_DDIM: "DDIM",
  SAMPLER_DPM_SOLVER_PP_2M: "DPM-Solver++ 2M",
  SAMPLER_COSINE_DPM_SOLVER_PP_2M: "cosine DPM-Solver++ 2M",
  SAMPLER_COSINE_DPM_SOLVER_PP_2M_SDE: "cosine DPM-Solver++ 2M SDE",
  SAMPLER_PING_PONG: "ping-pong",
};
const INPUT_NAMES = {
  MODEL_INPUT_NEGATIVE_PROMPT: "negative prompt",
  MODEL_INPUT_GUIDANCE: "guidance",
  MODEL_INPUT_TEMPO: "tempo control",
  MODEL_INPUT_KEY: "key control",
  MODEL_INPUT_INIT_AUDIO: "a clip to start from",
  MODEL_INPUT_LYRICS: "lyrics",
  MODEL_INPUT_VOCAL_LANGUAGE: "vocal language",
  MODEL_INPUT_REPAINT: "repaint",
};
const samplerName = (s) => SAMPLER_NAMES[s] || short(s).replace(/^sampler_/, "");
// proto3 JSON leaves out zeros, false and empty lists.
const inputsOf = (m) => (m ? m.inputs || [] : FALLBACK_INPUTS);
const takes = (m, input) => inputsOf(m).includes(input);

function chosenName() {
  const r = $('#models input[type="radio"]:checked');
  return r ? r.value : "";
}

// The catalogue entry the form follows: the chosen name at the chosen version (newest: none).
function chosenModel() {
  const name = chosenName();
  const version = $("#f-version").value;
  return catalogue.models.find((m) => m.name === name && (version ? m.version === version : m.newest)) || null;
}

function audioText(m) {
  const ch = { 1: "mono", 2: "stereo" }[m.channels] || `${m.channels || 0} channels`;
  return `${ch} ${(m.sample_rate || 0) / 1000} kHz`;
}

function limitsText(m) {
  const samplers = (m.samplers || []).length;
  return [
    audioText(m),
    `up to ${m.max_duration_seconds || 0} s`,
    `${m.default_steps || 0} steps (max ${m.max_steps || 0})`,
    `${samplers} sampler${samplers === 1 ? "" : "s"}`,
  ].join(" · ");
}

function stateText(m) {
  const a = m.availability;
  if (!a) return "";
  if (a.ready) return `ready · ${a.workers || 0} worker${a.workers === 1 ? "" : "s"}`;
  return `not ready: ${a.reason || "no worker"}`;
}

// How the pack serves a key the prompt asks for (KeyServing), where it does more than render it
// as asked; empty otherwise.
function keysText(m) {
  const k = m.key_serving;
  if (!k) return "";
  const parts = [];
  for (const [mode, tonics] of [["major", k.major_tonics], ["minor", k.minor_tonics]]) {
    if (tonics && tonics.length) parts.push(`"${mode}" alone is served in ${tonics.join(", ")}`);
  }
  const n = count(k.varispeed_semitones);
  if (n) parts.push(`other tonics are rendered up to ${n} semitone${n === 1 ? "" : "s"} away and played back in the asked key`);
  return parts.join("; ");
}

// The picker: one card per model name (its newest version), the default marked.
function renderPicker() {
  const box = $("#models");
  const models = catalogue.models.filter((m) => m.newest);
  if (!models.length) {
    box.dataset.keys = "";
    box.innerHTML = '<p class="muted">This farm serves no model pack.</p>';
    return;
  }
  const keys = models.map((m) => m.name).join("\n");
  let chosen = chosenName();
  if (box.dataset.keys !== keys) {
    box.dataset.keys = keys;
    box.textContent = "";
    for (const m of models) {
      const card = document.createElement("label");
      card.className = "model-card";
      card.dataset.model = m.name;
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = "model.name";
      radio.value = m.name;
      const head = document.createElement("span");
      head.className = "model-head";
      const name = document.createElement("strong");
      name.className = "model-name";
      name.textContent = m.name;
      head.append(name);
      if (m.is_default) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "default";
        head.append(" ", badge);
      }
      const family = document.createElement("span");
      family.className = "model-family muted";
      head.append(" ", family);
      const limits = document.createElement("span");
      limits.className = "model-limits";
      const inputs = document.createElement("span");
      inputs.className = "model-takes muted";
      const keys = document.createElement("span");
      keys.className = "model-keys muted";
      const state = document.createElement("span");
      state.className = "model-state";
      card.append(radio, head, limits, inputs, keys, state);
      box.append(card);
    }
  }
  if (!models.some((m) => m.name === chosen)) {
    chosen = models.some((m) => m.name === catalogue.default_model) ? catalogue.default_model : models[0].name;
  }
  for (const card of $$(".model-card", box)) {
    const m = models.find((x) => x.name === card.dataset.model);
    $("input", card).checked = m.name === chosen;
    $(".model-family", card).textContent = `${m.family || ""} ${m.version}`;
    $(".model-limits", card).textContent = limitsText(m);
    const extra = inputsOf(m).filter((i) => !FALLBACK_INPUTS.includes(i)).map((i) => INPUT_NAMES[i] || i);
    $(".model-takes", card).textContent = extra.length ? "takes " + extra.join(", ") : "";
    $(".model-keys", card).textContent = keysText(m);
    const state = $(".model-state", card);
    state.textContent = stateText(m);
    state.dataset.ready = String(!!(m.availability && m.availability.ready));
  }
}

// The version select, shown when the chosen name has more than one.
function renderVersions() {
  const m = catalogue.models.find((x) => x.name === chosenName() && x.newest);
  const versions = m ? m.versions || [] : [];
  const sel = $("#f-version");
  const keys = chosenName() + "\n" + versions.join("\n");
  if (sel.dataset.keys !== keys) {
    const keep = sel.value;
    sel.dataset.keys = keys;
    sel.replaceChildren(new Option(`newest (${versions[0] || ""})`, ""), ...versions.map((v) => new Option(v, v)));
    sel.value = versions.includes(keep) ? keep : "";
  }
  $("#version-row").hidden = versions.length < 2;
}

// The form follows the chosen model: only the fields it takes, its samplers and its limits.
function applyModel() {
  const m = chosenModel();
  const key = m ? JSON.stringify({ ...m, availability: null }) : "";
  if (key === appliedModel) return;
  appliedModel = key;
  for (const el of $$("[data-input]")) el.hidden = !takes(m, el.dataset.input);
  // A song model's languages (what the user picked stays when the new model sings it too).
  const lang = $("#f-language");
  const langs = (m && m.lyrics_languages) || [];
  const keepLang = lang.value || "en";
  lang.replaceChildren(...langs.map((l) => new Option(l, l)));
  lang.value = langs.includes(keepLang) ? keepLang : langs[0] || "";
  const sel = $("#f-sampler");
  const samplers = m ? m.samplers || [] : [];
  sel.replaceChildren(
    new Option(m ? `model default (${samplerName(m.default_sampler || "")})` : "model default", "SAMPLER_UNSPECIFIED"),
    ...samplers.map((s) => new Option(samplerName(s), s)),
  );
  sel.value = samplers.includes(chosenSampler) ? chosenSampler : "SAMPLER_UNSPECIFIED";
  const steps = $("#f-steps"), guidance = $("#f-guidance"), duration = $("#f-duration");
  if (m) {
    duration.min = String(m.min_duration_seconds || 0);
    duration.max = String(m.max_duration_seconds || 0);
    steps.max = String(m.max_steps || 0);
    steps.placeholder = `default ${m.default_steps || 0}`;
    guidance.max = String(m.max_guidance_scale || 0);
    guidance.placeholder = `default ${m.default_guidance_scale || 0}`;
    $("#f-steps-limit").textContent = `1–${m.max_steps || 0}`;
    $("#f-guidance-limit").textContent = `0–${m.max_guidance_scale || 0}`;
  } else {
    for (const el of [duration, steps, guidance]) el.removeAttribute("max");
    steps.placeholder = guidance.placeholder = "model default";
    $("#f-steps-limit").textContent = $("#f-guidance-limit").textContent = "";
  }
  durationHint();
  modelNote();
}

function durationHint() {
  const m = chosenModel();
  const el = $("#f-duration-limit");
  if (!m) {
    el.textContent = "";
    return;
  }
  const range = `${m.min_duration_seconds || 0}–${m.max_duration_seconds || 0} s`;
  const v = num($("#f-duration"));
  el.textContent = v !== undefined && v > (m.max_duration_seconds || 0) ? `${range}: longer than ${m.name} makes` : range;
}

// Which of the preview's controls the model takes as numbers, and which it reads as text.
function modelNote() {
  const m = chosenModel();
  const note = $("#preview-model");
  if (!m) {
    note.textContent = "";
    return;
  }
  const controls = [], text = [];
  (takes(m, "MODEL_INPUT_TEMPO") ? controls : text).push("tempo");
  (takes(m, "MODEL_INPUT_KEY") ? controls : text).push("key");
  const parts = [];
  if (controls.length) parts.push(`${m.name} takes the ${controls.join(" and ")} as controls`);
  if (text.length) parts.push(`${controls.length ? "it" : m.name} reads the ${text.join(" and ")} in the text only`);
  note.textContent = parts.join("; ") + ".";
}

async function loadModels() {
  try {
    const c = await api("/api/models");
    catalogue = { models: c.models || [], default_model: c.default_model || "" };
    renderPicker();
    renderVersions();
    applyModel();
  } catch (e) {
    if (!catalogue.models.length) {
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = "The models cannot be read: " + e.message;
      $("#models").dataset.keys = "";
      $("#models").replaceChildren(p);
      applyModel();
    }
  }
}
