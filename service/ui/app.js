"use strict";
// The demo page. It calls the public REST API exactly as a client would: the API key is read
// from its field for every request (kept in the page only), and nothing is fetched from
// anywhere but this server. Models are found in GET /models by task, never by name.

const $ = (selector) => document.querySelector(selector);
const TASK_ALIASES = { "digit-classification": "image-classification", "sentiment-classification": "text-classification" };
const HINTS = {
  401: "Type a valid API key at the top of the page.",
  413: "The request is larger than the server accepts.",
  429: "The server is busy: try again in a moment.",
  504: "The server did not answer in time.",
};
const state = { models: [], pins: {}, listed: false };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// --- The API ------------------------------------------------------------------------------

class ApiError extends Error {}

async function readableError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says it all
  }
  const code = body && typeof body.error === "string" ? body.error : response.statusText || "error";
  const detail = body && typeof body.detail === "string" ? body.detail : "no details given";
  const hint = HINTS[response.status] ? ` ${HINTS[response.status]}` : "";
  return new ApiError(`${response.status} ${code}: ${detail}.${hint}`.replace("..", "."));
}

// GET (no body) or POST a JSON object or a form; `model` names the model whose pinned version
// goes in X-Model-Version. Answers {data, version, ms}; throws ApiError with a readable message.
async function call(path, { json, form, model, as = "json" } = {}) {
  const headers = {};
  const key = $("#api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (model && state.pins[model]) headers["X-Model-Version"] = state.pins[model];
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { method: body === undefined ? "GET" : "POST", headers, body, cache: "no-store" });
  } catch (error) {
    throw new ApiError(`The server did not answer (${error.message}).`);
  }
  if (!response.ok) throw await readableError(response);
  const data = as === "blob" ? await response.blob() : await response.json();
  const version = response.headers.get("X-Model-Version") || response.headers.get("X-Version") || data.version || "";
  return { data, version, ms: performance.now() - started };
}

function showError(node, error) {
  node.textContent = error instanceof ApiError ? error.message : `Something went wrong in the page: ${error}`;
  node.hidden = false;
}

function hideError(node) {
  node.hidden = true;
  node.textContent = "";
}

const served = (version, ms) => `${version ? `version ${version} · ` : ""}${Math.round(ms)} ms`;

// --- Models -------------------------------------------------------------------------------

// The registry entry in the current shape: `versions` a list of loaded versions (an older
// server has package versions there: then the one loaded version is entry.version).
function normalized(entry) {
  const versions = Array.isArray(entry.versions) && entry.versions.length
    ? entry.versions
    : [{ version: entry.version, role: "default", traffic_share: 1, metrics: entry.metrics }];
  return { ...entry, task: TASK_ALIASES[entry.task] || entry.task, versions };
}

const missing = (what) => (state.listed ? `No ${what} is loaded.` : "The models are not listed yet: see the top of the page.");
const byTask = (task) => state.models.filter((model) => model.task === task);
const takesDigit = (model) => (model.graphs || []).some((graph) => graph.inputs.some((input) => input.kind === "class_index"));

async function loadModels() {
  const status = $("#status");
  hideError($("#models-error"));
  status.textContent = "Loading the models…";
  try {
    const { data } = await call("/models");
    state.models = data.models.map(normalized);
    state.listed = true;
    status.textContent = `${state.models.length} models loaded`;
    status.classList.remove("failed");
  } catch (error) {
    state.models = [];
    state.listed = false;
    showError($("#models-error"), error);
    status.textContent = `The models could not be listed: ${error.message}`;
    status.classList.add("failed");
  }
  renderModels();
  renderClassifiers();
  renderTextModels();
  renderGenerators();
  return state.models.length > 0;
}

function metricsText(metrics) {
  const parts = Object.entries(metrics || {})
    .filter(([, value]) => typeof value === "number")
    .slice(0, 4)
    .map(([name, value]) => `${name} ${Number.isInteger(value) ? value : value.toFixed(4)}`);
  return parts.join(", ") || "–";
}

function versionText(version) {
  const share = typeof version.traffic_share === "number" ? `, ${Math.round(version.traffic_share * 100)}%` : "";
  return `${version.version} (${version.role || "loaded"}${share})`;
}

function renderModels() {
  const rows = $("#models-table tbody");
  rows.replaceChildren();
  for (const model of state.models) {
    const versions = el("td");
    for (const version of model.versions) versions.append(el("div", {}, el("code", { text: versionText(version) })));
    const metrics = el("td");
    for (const version of model.versions) metrics.append(el("div", { text: metricsText(version.metrics || model.metrics) }));
    rows.append(el("tr", { "data-model": model.name },
      el("td", { title: model.description || "" }, el("b", { text: model.name })),
      el("td", { text: model.task }),
      versions,
      metrics,
      el("td", {}, pinChoice(model))));
  }
}

// Where several versions are loaded, a choice of one to pin every request of the page to.
function pinChoice(model) {
  if (model.versions.length < 2) return document.createTextNode("its only version");
  const select = el("select", { "aria-label": `version of ${model.name}` }, el("option", { value: "", text: "as the server routes them" }));
  for (const version of model.versions) select.append(el("option", { value: version.version, text: `only ${versionText(version)}` }));
  select.value = state.pins[model.name] || "";
  select.addEventListener("change", () => { state.pins[model.name] = select.value; });
  return select;
}

// --- Digits -------------------------------------------------------------------------------

const pad = $("#pad");
const ink = pad.getContext("2d");
const drawing = { active: false, last: null, drawn: false, busy: false, again: false, sentAt: 0 };

function clearPad() {
  Object.assign(ink, { strokeStyle: "#000", lineWidth: 20, lineCap: "round", lineJoin: "round", fillStyle: "#fff" });
  ink.fillRect(0, 0, pad.width, pad.height);
  drawing.drawn = false;
}

function renderClassifiers() {
  const box = $("#classifiers");
  box.replaceChildren();
  const models = byTask("image-classification");
  if (!models.length) box.append(el("p", { class: "hint", text: missing("image classifier") }));
  for (const model of models) {
    box.append(el("div", { class: "classifier", "data-model": model.name },
      el("h4", { text: model.name }),
      el("div", { class: "label", text: "–" }),
      el("div", { class: "bars" }),
      el("div", { class: "served" }),
      el("p", { class: "error", role: "alert", hidden: "" })));
  }
}

async function classifyOne(model, image) {
  const card = [...document.querySelectorAll(".classifier")].find((node) => node.dataset.model === model.name);
  const form = new FormData();
  form.append("image", image, image.name || "digit.png");
  form.append("model", model.name);
  form.append("top_k", "3");
  try {
    const { data, version, ms } = await call("/classify/image", { form, model: model.name });
    hideError(card.querySelector(".error"));
    card.querySelector(".label").textContent = data.label;
    card.querySelector(".bars").replaceChildren(...data.predictions[0].map((p) => el("div", { class: "bar" },
      el("span", { text: p.label }),
      el("span", { class: "track" }, el("span", { class: "fill", style: `width: ${(p.probability * 100).toFixed(1)}%` })),
      el("span", { text: `${(p.probability * 100).toFixed(1)}%` }))));
    card.querySelector(".served").textContent = served(version, ms);
  } catch (error) {
    card.querySelector(".label").textContent = "–";
    card.querySelector(".bars").replaceChildren();
    showError(card.querySelector(".error"), error);
  }
}

const classifyAll = (image) => Promise.all(byTask("image-classification").map((model) => classifyOne(model, image)));

// Classified as you draw: at most one round in flight, and the last stroke always gets one.
async function classifyPad() {
  if (!drawing.drawn) return;
  if (drawing.busy) {
    drawing.again = true;
    return;
  }
  drawing.busy = true;
  pad.dataset.state = "classifying";
  try {
    const blob = await new Promise((resolve) => pad.toBlob(resolve, "image/png"));
    await classifyAll(blob);
  } finally {
    drawing.busy = false;
    if (drawing.again) {
      drawing.again = false;
      classifyPad();
    } else if (!drawing.active) {
      pad.dataset.state = "classified";
    }
  }
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return { x: ((event.clientX - box.left) * pad.width) / box.width, y: ((event.clientY - box.top) * pad.height) / box.height };
}

function stroke(from, to) {
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  Object.assign(drawing, { active: true, drawn: true, last: point(event) });
  pad.dataset.state = "drawing";
  stroke(drawing.last, drawing.last);
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing.active) return;
  const next = point(event);
  stroke(drawing.last, next);
  drawing.last = next;
  if (performance.now() - drawing.sentAt > 250) {
    drawing.sentAt = performance.now();
    classifyPad();
  }
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (!drawing.active) return;
    drawing.active = false;
    if (drawing.busy) drawing.again = true;
    else classifyPad();
  });
}

$("#clear").addEventListener("click", () => {
  clearPad();
  renderClassifiers();
  delete pad.dataset.state;
});

// An uploaded file goes to the server as it is (the server frames it); it is shown on the pad.
$("#upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  clearPad();
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const width = bitmap.width * scale;
    const height = bitmap.height * scale;
    ink.drawImage(bitmap, (pad.width - width) / 2, (pad.height - height) / 2, width, height);
  } catch {
    // the browser cannot show it: the server says what is wrong with it
  }
  pad.dataset.state = "classifying";
  await classifyAll(file);
  pad.dataset.state = "classified";
});

// --- Reviews ------------------------------------------------------------------------------

function renderTextModels() {
  const select = $("#review-model");
  const models = byTask("text-classification");
  select.replaceChildren(...models.map((model) => el("option", { value: model.name, text: model.name })));
  select.hidden = models.length < 2;
}

async function classifyReviews() {
  const texts = $("#review-text").value.split("\n").map((line) => line.trim()).filter(Boolean);
  const name = $("#review-model").value;
  const json = byTask("text-classification").length > 1 ? { texts, model: name } : { texts };
  const list = $("#review-results");
  try {
    const { data, version, ms } = await call("/sentiment", { json, model: name });
    hideError($("#reviews-error"));
    list.replaceChildren(...data.results.map((result, i) => el("li", {},
      el("span", { class: `verdict ${result.label}`, text: result.label }),
      el("span", { class: "info", text: ` ${(result.probability * 100).toFixed(1)}%  ` }),
      el("span", { class: "text", text: texts[i] }))));
    $("#review-info").textContent = `${data.model || name} · ${served(version, ms)}`;
  } catch (error) {
    list.replaceChildren();
    $("#review-info").textContent = "";
    showError($("#reviews-error"), error);
  }
}

$("#review-go").addEventListener("click", classifyReviews);

// --- Generators ---------------------------------------------------------------------------

const GENERATORS = { "image-generation": "/gan/generate", "variational-autoencoder": "/vae/sample" };
const generators = () => Object.keys(GENERATORS).flatMap((task) => byTask(task));
const shown = new Map(); // img -> object URL, revoked when replaced

function showImage(img, blob) {
  if (shown.has(img)) URL.revokeObjectURL(shown.get(img));
  const url = URL.createObjectURL(blob);
  shown.set(img, url);
  img.src = url;
}

function renderGenerators() {
  const grids = $("#grids");
  grids.replaceChildren();
  if (!generators().length) grids.append(el("p", { class: "hint", text: missing("generator") }));
  for (const model of generators()) {
    grids.append(el("figure", { "data-model": model.name },
      el("img", { alt: `images generated by ${model.name}` }),
      el("figcaption", {}, el("b", { text: model.name }), el("span", { class: "served" })),
      el("p", { class: "error", role: "alert", hidden: "" })));
  }
  const digit = $("#digit");
  if (digit.options.length === 1) for (let d = 0; d < 10; d++) digit.append(el("option", { value: String(d), text: String(d) }));
  $("#digit-choice").hidden = !generators().some(takesDigit);
}

const numberOrNull = (selector) => ($(selector).value.trim() === "" ? null : Number($(selector).value));

async function generateOne(model, figure) {
  const json = { n: numberOrNull("#count"), seed: numberOrNull("#seed"), format: "png" };
  if (byTask(model.task).length > 1) json.model = model.name;
  if ($("#digit").value !== "" && takesDigit(model)) json.label = Number($("#digit").value);
  try {
    const { data, version, ms } = await call(GENERATORS[model.task], { json, model: model.name, as: "blob" });
    hideError(figure.querySelector(".error"));
    showImage(figure.querySelector("img"), data);
    figure.querySelector(".served").textContent = ` · ${served(version, ms)}`;
  } catch (error) {
    figure.querySelector("img").removeAttribute("src");
    figure.querySelector(".served").textContent = "";
    showError(figure.querySelector(".error"), error);
  }
}

const generateAll = () => Promise.all(generators().map((model) =>
  generateOne(model, [...document.querySelectorAll("#grids figure")].find((node) => node.dataset.model === model.name))));

async function interpolate() {
  const model = byTask("variational-autoencoder")[0];
  const error = $("#generators-error");
  if (!model) return showError(error, new ApiError(missing("variational autoencoder")));
  const json = { seed_a: numberOrNull("#seed-a"), seed_b: numberOrNull("#seed-b"), steps: numberOrNull("#steps") };
  try {
    const { data, version, ms } = await call("/vae/interpolate", { json, model: model.name, as: "blob" });
    hideError(error);
    showImage($("#strip"), data);
    $("#strip-info").textContent = `${model.name} · ${served(version, ms)}`;
  } catch (failure) {
    $("#strip").removeAttribute("src");
    $("#strip-info").textContent = "";
    showError(error, failure);
  }
}

$("#generate").addEventListener("click", generateAll);
$("#interpolate").addEventListener("click", interpolate);
$("#new-seed").addEventListener("click", () => {
  $("#seed").value = String(Math.floor(Math.random() * 1e9));
  generateAll();
});

// --- Start --------------------------------------------------------------------------------

async function start() {
  if (await loadModels()) await Promise.all([generateAll(), interpolate(), classifyReviews()]);
  document.body.dataset.ready = "true";
}

$("#key-form").addEventListener("submit", (event) => event.preventDefault());
$("#api-key").addEventListener("change", () => {
  delete document.body.dataset.ready;
  start();
});
clearPad();
start();
