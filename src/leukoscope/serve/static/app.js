// leukoscope page: drop images, POST them to /api/predict in batches, show each call; no libraries.
// With a patient model the dropped cells are one patient's: all go to /api/patient together, and the
// patient summary (call, interval, composition) sits above the cell list.
"use strict";

// rows: one per result node, in the order the files were chosen; a row is `pending` until its call comes.
// generation: bumped whenever the results are cleared, so that a response to an earlier request is ignored.
const state = { card: null, rows: [], busy: 0, patient: false, patientFiles: [], generation: 0 };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, bad = false) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("bad", bad);
}

const pct = (p) => (100 * p).toFixed(1) + "%";
// A probability as text: no model knows a call to 100 % (or 0 %), so neither does the page.
const shown = (p) => (p >= 0.999 ? "> 99.9%" : p <= 0.001 ? "< 0.1%" : pct(p));
// null is a figure that could not be computed (a NaN on the server): shown as "n/a", never "null"
const fmt = (v) => (v === null || v === undefined ? "n/a"
  : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v));

// ---- model card -------------------------------------------------------------------------------
function definitionList(pairs) {
  const dl = el("dl");
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("dt", {}, k));
    const dd = el("dd");
    if (v instanceof Node) dd.append(v); else dd.textContent = String(v);
    dl.append(dd);
  }
  return dl;
}

// The figures a model is judged by; other numbers of metrics.json (split sizes, timings) are bookkeeping.
const FIGURE = /^(accuracy|balanced_accuracy|roc_auc|f1_\w+|precision_\w+|recall_\w+|ece\w*|brier|sensitivity|specificity)$/;

function metricsTable(metrics) {
  // Parts (validation, test, patient, ...) as columns, their figures as rows, each with its 95 % interval
  // where the part records one (``<figure>_ci95`` or ``ci95.<figure>``); top-level numbers below.
  const parts = {}, scalars = [];
  const label = (k) => k.replace(/_/g, " ");
  for (const [part, figures] of Object.entries(metrics || {})) {
    if (figures && typeof figures === "object" && !Array.isArray(figures)) {
      const nums = Object.entries(figures).filter(([k, v]) => typeof v === "number" && FIGURE.test(k));
      if (!nums.length) continue;
      parts[part] = Object.fromEntries(nums.map(([k, v]) => {
        const ci = figures[`${k}_ci95`] || (figures.ci95 && figures.ci95[k]);
        return [k, Array.isArray(ci) && ci.length === 2 && ci.every((x) => typeof x === "number")
          ? `${fmt(v)} [${ci[0].toFixed(3)}, ${ci[1].toFixed(3)}]` : fmt(v)];
      }));
    } else if (typeof figures === "number") {
      scalars.push(`${label(part)} ${fmt(figures)}`);
    }
  }
  const names = Object.keys(parts);
  const box = el("div", { class: "metrics" });
  if (!names.length) box.append(el("p", { class: "muted" }, "No metrics recorded in this bundle."));
  else {
    const table = el("table");
    const head = el("tr");
    head.append(el("th", {}, "metric"));
    for (const p of names) head.append(el("th", {}, label(p)));
    table.append(head);
    for (const m of [...new Set(names.flatMap((p) => Object.keys(parts[p])))]) {
      const tr = el("tr");
      tr.append(el("td", {}, label(m)));
      for (const p of names) tr.append(el("td", {}, m in parts[p] ? parts[p][m] : "–"));
      table.append(tr);
    }
    box.append(table);
  }
  if (scalars.length) box.append(el("p", { class: "muted" }, scalars.join(" · ")));
  return box;
}

function renderCard(card) {
  $("#model-name").textContent = `${card.model} (${card.family})`;
  if (card.family === "patient") {
    state.patient = true;
    $("#drop-title").textContent = "Drop the cells of one patient here";
    $("#drop-hint").textContent = "or click to choose them; in one drop or several, the call is made from all " +
      "of them together (BMP, PNG, JPEG, TIFF). Clear starts the next patient.";
  }
  const box = $("#card");
  box.replaceChildren();
  const protocol = el("span", { class: "protocol" }, card.protocol);
  box.append(definitionList([
    ["model", card.model], ["family", card.family], ["classes", card.classes.map(displayName).join(", ")],
    ["trained on", card.data], ["protocol", protocol], ["input size", card.input_size],
    ["runtime", card.runtime],
    ["temperature", fmt(card.temperature)], ["explained by", card.explanation || "–"],
    ["created", card.created],
  ]));
  if (card.warning) box.append(el("p", { class: "warning" }, card.warning));
  const split = Object.entries(card.split || {});
  if (split.length) {
    box.append(el("h3", {}, "Training data"));
    const t = el("table");
    const head = el("tr");
    for (const h of ["part", "images", card.protocol === "image-level" ? "groups" : "subjects"]) head.append(el("th", {}, h));
    t.append(head);
    for (const [part, n] of split) {
      const tr = el("tr");
      for (const v of [part, n.images, n.groups]) tr.append(el("td", {}, String(v)));
      t.append(tr);
    }
    box.append(t);
  }
  box.append(el("h3", {}, "Validation and test metrics"));
  box.append(metricsTable(card.metrics));
  box.append(el("h3", {}, "Intended use"));
  box.append(el("p", { class: "warning" }, card.intended_use));
  const lim = card.limits;
  box.append(el("p", { class: "muted" },
    `Limits: ${lim.max_files} files per request, ${(lim.max_bytes / 1048576).toFixed(1)} MB per file, ` +
    `${(lim.max_pixels / 1e6).toFixed(1)} megapixels per image, ` +
    `${(lim.max_request_pixels / 1e6).toFixed(1)} megapixels per request.`));
}

async function loadCard() {
  try {
    const r = await fetch("/api/model");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    state.card = await r.json();
    renderCard(state.card);
  } catch (e) {
    $("#card").replaceChildren(el("p", { class: "error" }, `Could not load the model card: ${e.message}`));
  }
}

// ---- results ----------------------------------------------------------------------------------
// A result node for a file (``showOnTop`` puts it on the page and reserves its CSV row); the CSV's file
// column is the name the user chose.
function newResult(file) {
  const node = $("#result-template").content.firstElementChild.cloneNode(true);
  node.row = { name: file.name, pending: true };
  node.querySelector(".thumb").src = URL.createObjectURL(file);
  node.querySelector(".thumb").alt = file.name;
  node.querySelector(".name").textContent = file.name;
  node.querySelector(".label").textContent = "…";
  return node;
}

// The rows whose call has come (or failed).
const doneRows = () => state.rows.filter((r) => !r.pending);

// The body of a response as JSON, or null where it is none (a proxy's HTML error page, say).
async function readJson(r) {
  if (!(r.headers.get("content-type") || "").includes("json")) return null;
  try { return await r.json(); } catch { return null; }
}

const httpError = (r) => `HTTP ${r.status}${r.statusText ? " " + r.statusText : ""}`;
const detailOf = (data, r) => (data && typeof data.detail === "string" && data.detail) || httpError(r);

function showError(node, message) {
  node.classList.add("failed");
  const thumb = node.querySelector(".thumb");
  if (thumb.src.startsWith("blob:")) URL.revokeObjectURL(thumb.src);
  node.querySelector(".images").hidden = true;
  node.querySelector(".label").textContent = state.patient ? "not used" : "not classified";
  const err = node.querySelector(".error");
  err.textContent = message;
  err.hidden = false;
  Object.assign(node.row, { pending: false, label: "", probabilities: {}, error: message });
}

function showResult(node, res) {
  if (res.error) return showError(node, res.error);
  node.querySelector(".label").textContent = res.cell_type || displayName(res.label);
  node.dataset.label = res.label;
  if (res.thumbnail) { // decoded by the server: also shows formats the browser cannot (TIFF)
    const thumb = node.querySelector(".thumb");
    if (thumb.src.startsWith("blob:")) URL.revokeObjectURL(thumb.src);
    thumb.src = res.thumbnail;
  }
  const bars = node.querySelector(".bars");
  if (res.unfamiliar) showUnfamiliar(node, res);
  const sorted = Object.entries(res.probabilities).sort((a, b) => b[1] - a[1]);
  sorted.forEach(([cls, p]) => {
    // the accent goes to the class called (with an operating point not always the most probable one)
    const li = el("li", cls === res.label && !res.unfamiliar ? { class: "top" } : {});
    const bar = el("div", { class: "bar", role: "img", "aria-label": `${displayName(cls)} ${shown(p)}` });
    const fill = el("span");
    fill.style.width = pct(p);
    bar.append(fill);
    li.append(el("span", { class: "cls" }, displayName(cls)), bar, el("span", { class: "p" }, shown(p)));
    bars.append(li);
  });
  if (res.heatmap) {
    node.querySelector(".heatmap").src = res.heatmap;
    node.querySelector(".heat-figure").hidden = false;
  }
  if (res.features && res.features.length) {
    const list = node.querySelector(".features");
    for (const f of res.features) {
      const towards = f.contribution >= 0;
      list.append(el("li", { class: towards ? "towards" : "against" },
        `${f.feature} = ${fmt(f.value)}: ${towards ? "+" : "−"}${Math.abs(f.contribution).toFixed(2)} log-odds ${towards ? "towards" : "against"} the call`));
    }
    node.querySelector(".why").hidden = false;
  }
  if (res.cell_type) showCell(node, res);
  Object.assign(node.row, { pending: false, subject: res.subject, label: res.label,
    probabilities: res.probabilities, error: "", cell_type: res.cell_type, contribution: res.contribution,
    unfamiliarity: res.unfamiliarity, unfamiliar: res.unfamiliar });
}

// A cell unlike the model's training data: no call, and no bar drawn as the winner.
function showUnfamiliar(node, res) {
  node.classList.add("unfamiliar");
  node.querySelector(".label").textContent = "unfamiliar";
  const info = node.querySelector(".unfamiliar-info");
  info.textContent = `Unlike the cells this model was trained on (unfamiliarity ${fmt(res.unfamiliarity)} > ` +
    `threshold ${fmt(res.threshold)}): no call is made; the probabilities below are not to be trusted.`;
  info.hidden = false;
}

// ---- patient view -----------------------------------------------------------------------------
function showCell(node, res) {
  // One cell of a patient: its predicted type is the headline; the bars are the cell alone.
  const positive = state.patientSummary.positive;
  const toward = res.contribution >= 0 ? positive : state.card.classes.find((c) => c !== positive);
  const info = node.querySelector(".cell-info");
  info.textContent = res.unfamiliar ? `predicted type ${res.cell_type} (not to be trusted) · left out of the patient's call`
    : `predicted type (${shown(res.cell_type_probability)}) · moved the patient's score ` +
    `${Math.abs(res.contribution).toFixed(3)} toward ${toward} · bars: this cell on its own`;
  info.hidden = false;
  if (res.driver) {
    node.classList.add("driver");
    node.querySelector(".name").append(el("span", { class: "badge" }, "drove the call"));
  }
}

function shareRow(s) {
  const tr = el("tr");
  for (const v of [s.cell_type, String(s.count), pct(s.share), `${pct(s.low)} – ${pct(s.high)}`]) tr.append(el("td", {}, v));
  return tr;
}

function renderPatient(p) {
  state.patientSummary = p;
  const box = $("#patient");
  box.replaceChildren();
  box.hidden = false;
  const negative = state.card.classes.find((c) => c !== p.positive);
  box.append(el("h2", {}, "Patient summary"));
  const verdict = el("div", { class: "verdict " + (p.call === null ? "nocall" : p.call === p.positive ? "positive" : "negative") });
  verdict.append(el("span", { class: "verdict-call" }, p.call === null ? "No call" : `Call: ${p.call}`));
  const interval = p.cells_used > 1 ? `95% interval ${shown(p.interval[0])} – ${shown(p.interval[1])}` : "no interval from one cell";
  verdict.append(el("span", { class: "verdict-p" }, p.probability === null ? "no probability: no cell left to call from"
    : `P(${p.positive}) ${shown(p.probability)} (${interval})`));
  box.append(verdict);
  box.append(el("p", { class: "muted" },
    `Threshold ${shown(p.threshold)}: at or above it ${p.positive}, below ${negative}. ` +
    `${p.cells_used} cell(s) used, ${p.skipped.length} skipped` +
    (p.cells_unfamiliar === null ? "." : `, ${p.cells_unfamiliar} unfamiliar (left out).`)));
  if (p.unfamiliar_note) {
    // Cells unlike the training cohort's are left out of the call; the server says how many, in words.
    box.append(el("p", { class: "warning unfamiliar" }, `${p.unfamiliar_note}.`));
  }
  if (p.too_few) {
    box.append(el("p", { class: "warning too-few" }, `Too few cells to be sure: ${p.cells_used} cell(s) could be used, ` +
      `and this model makes no call below ${p.min_cells}. Add more cells of this patient.`));
  } else if (p.uncertain) {
    box.append(el("p", { class: "note" }, "The 95% interval spans the threshold: with other cells of this patient " +
      "the call could have been the other one. More cells would settle it."));
  }
  box.append(el("h3", {}, "Cell-type composition (predicted)"));
  const table = el("table", { class: "composition" });
  const head = el("tr");
  for (const h of ["cell type", "cells", "share", "95% interval"]) head.append(el("th", {}, h));
  table.append(head);
  const seen = p.composition.filter((s) => s.count > 0), none = p.composition.filter((s) => s.count === 0);
  seen.forEach((s) => table.append(shareRow(s)));
  box.append(table);
  if (none.length) {
    box.append(el("p", { class: "muted" }, `${none.length} other type(s) with no cell: each at most ` +
      `${pct(none[0].high)} of this patient's cells (${none.map((s) => s.cell_type).join(", ")}).`));
  }
  box.append(el("p", { class: "muted" }, `Interval on the probability: ${p.interval_method}. ` +
    `Shares: ${p.composition_method}.`));
  if (p.skipped.length) {
    const details = el("details");
    details.append(el("summary", {}, `Skipped (${p.skipped.length})`));
    const ul = el("ul");
    p.skipped.forEach((s) => ul.append(el("li", {}, `${s.name}: ${s.reason}`)));
    details.append(ul);
    box.append(details);
  }
}

// A drop's results on top of the page, in the order chosen, and their rows on top of the CSV: the CSV
// lists the results in the order the page shows them.
function showOnTop(nodes) {
  $("#results").prepend(...nodes);
  state.rows.unshift(...nodes.map((n) => n.row));
}

function showPatientError(message) {
  state.patientSummary = null;
  const box = $("#patient");
  box.replaceChildren(el("h2", {}, "Patient summary"), el("p", { class: "error" }, message));
  box.hidden = false;
}

async function diagnosePatient(files) {
  // A patient call is made from all of its cells together, so every cell dropped so far goes in one request.
  state.patientFiles.push(...files);
  const all = state.patientFiles;
  clearCells();
  const generation = state.generation;
  const nodes = all.map(newResult);
  showOnTop(nodes);
  const lim = state.card.limits;
  const bytes = all.reduce((n, f) => n + f.size, 0);
  let problem = "";
  if (all.length > lim.max_files) problem = `${all.length} cells are more than this server takes in one request ` +
    `(${lim.max_files}); a patient call needs all its cells together (serve --max-files)`;
  else if (bytes > lim.max_body - 65536) problem = `${(bytes / 1048576).toFixed(1)} MB of cells is more than this ` +
    `server takes in one request (serve --max-body)`;
  if (problem) {
    showPatientError(problem);
    nodes.forEach((n) => showError(n, "not sent: too many cells for one request"));
    updateButtons();
    return;
  }
  state.busy += 1;
  updateButtons();
  setStatus(`Calling the patient from ${all.length} cell(s)…`);
  const body = new FormData();
  all.forEach((f) => body.append("files", f, f.name));
  let r, data;
  try {
    r = await fetch("/api/patient?thumbnail=true", { method: "POST", body });
    data = await readJson(r);
  } catch (e) {
    r = null;
    data = { detail: `request failed: ${e.message}` };
  }
  state.busy -= 1;
  if (generation !== state.generation) { // a later drop (or Clear) superseded this request
    updateButtons();
    return;
  }
  const detail = r ? detailOf(data, r) : data.detail;
  if (r && r.ok && data && data.patient) renderPatient(data.patient); else showPatientError(detail);
  if (data && Array.isArray(data.results)) data.results.forEach((res, i) => showResult(nodes[i], res));
  else nodes.forEach((n) => showError(n, detail.startsWith("request failed") ? detail : `request failed: ${detail}`));
  // the summary's own counts (what report says): unfamiliar cells are not used, overviews are skipped
  const p = data && data.patient;
  if (p) {
    const left = [p.skipped.length ? `${p.skipped.length} skipped` : "",
      p.cells_unfamiliar ? `${p.cells_unfamiliar} unfamiliar` : ""].filter(Boolean).join(", ");
    setStatus(`${p.cells_used} of ${all.length} cell(s) used` + (left ? `; ${left}` : ""), false);
  } else {
    setStatus(detail, true);
  }
  updateButtons();
}

async function classifyBatch(files, nodes, generation) {
  const body = new FormData();
  files.forEach((f) => body.append("files", f, f.name));
  let data;
  try {
    const r = await fetch("/api/predict?thumbnail=true", { method: "POST", body });
    if (generation !== state.generation) return; // cleared meanwhile: these nodes are gone
    // too many bytes or pixels together (from the server, or a proxy in front of it): halve the batch
    if (r.status === 413 && files.length > 1) {
      const half = Math.ceil(files.length / 2);
      await classifyBatch(files.slice(0, half), nodes.slice(0, half), generation);
      await classifyBatch(files.slice(half), nodes.slice(half), generation);
      return;
    }
    data = await readJson(r);
    if (generation !== state.generation) return;
    if (!data || !Array.isArray(data.results)) throw new Error(detailOf(data, r));
  } catch (e) {
    if (generation === state.generation) nodes.forEach((n) => showError(n, `request failed: ${e.message}`));
    return;
  }
  data.results.forEach((res, i) => showResult(nodes[i], res));
}

async function classify(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  if (state.patient) return diagnosePatient(files);
  const lim = state.card ? state.card.limits : { max_files: 8, max_bytes: Infinity, max_body: Infinity };
  const room = lim.max_body - 65536; // the body also carries multipart framing
  const generation = state.generation;
  const nodes = files.map(newResult);
  showOnTop(nodes);
  const batch = [], batchNodes = [], batches = [];
  let bytes = 0;
  files.forEach((f, i) => {
    const node = nodes[i];
    if (f.size > lim.max_bytes) {
      showError(node, `${f.name}: ${f.size.toLocaleString()} bytes exceeds the limit of ${lim.max_bytes.toLocaleString()}`);
      return;
    }
    if (batch.length && bytes + f.size > room) { batches.push([batch.splice(0), batchNodes.splice(0)]); bytes = 0; }
    batch.push(f); batchNodes.push(node); bytes += f.size;
    if (batch.length === lim.max_files) { batches.push([batch.splice(0), batchNodes.splice(0)]); bytes = 0; }
  });
  if (batch.length) batches.push([batch, batchNodes]);
  state.busy += 1;
  updateButtons();
  let done = 0;
  for (const [fs, ns] of batches) {
    setStatus(`Classifying ${done + 1}–${done + fs.length} of ${files.length}…`);
    await classifyBatch(fs, ns, generation);
    if (generation !== state.generation) break;
    done += fs.length;
  }
  state.busy -= 1;
  if (generation !== state.generation) return updateButtons();
  const rows = doneRows();
  const failed = rows.filter((r) => r.error).length;
  setStatus(`${rows.length} image(s) done` + (failed ? `, ${failed} could not be read` : ""), failed > 0);
  updateButtons();
}

function updateButtons() {
  const rows = doneRows();
  $("#csv").disabled = rows.length === 0 || state.busy > 0;
  $("#clear").disabled = (rows.length === 0 && !state.patientFiles.length) || state.busy > 0;
}

// A class code as a person reads it ("hem (normal)"), from the bundle's display names; the bare code otherwise.
function displayName(code) {
  const names = (state.card && state.card.display_names) || {};
  return names[code] && names[code] !== code ? `${code} (${names[code]})` : code;
}

// ---- CSV --------------------------------------------------------------------------------------
// A text cell (a file name, a label, an error): guarded so that spreadsheets do not run it as a formula.
function csvText(v) {
  let s = String(v ?? "");
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return csvCell(s);
}

// A cell as it is: numbers (a negative one too) stay numbers.
function csvCell(v) {
  const s = String(v ?? "");
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function downloadCsv() {
  const classes = state.card ? state.card.classes : [];
  const extra = state.patient ? ["cell_type", "contribution"] : [];
  // the columns of `leukoscope predict`'s CSV (file for path): subject empty where the name gives none
  const header = ["file", "subject", "predicted", ...classes.map((c) => `p_${c}`), ...extra, "unfamiliarity",
    "unfamiliar", "error"];
  const lines = [header.map(csvText).join(",")];
  const num = (v) => (v === undefined || v === null ? "" : v.toFixed(6));
  for (const r of doneRows()) {
    const probs = classes.map((c) => (r.probabilities && c in r.probabilities ? r.probabilities[c].toFixed(6) : ""));
    const cells = [csvText(r.name), csvText(r.subject), csvText(r.label), ...probs.map(csvCell)];
    if (state.patient) cells.push(csvText(r.cell_type), csvCell(num(r.contribution)));
    cells.push(csvCell(num(r.unfamiliarity)), csvCell(r.unfamiliar == null ? "" : String(r.unfamiliar)), csvText(r.error));
    lines.push(cells.join(","));
  }
  const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "leukoscope-results.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function clearCells() {
  for (const img of document.querySelectorAll("#results .thumb")) {
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  }
  $("#results").replaceChildren();
  state.rows = [];
  state.generation += 1;
}

function clearResults() {
  clearCells();
  state.patientFiles = [];
  state.patientSummary = null;
  $("#patient").replaceChildren();
  $("#patient").hidden = true;
  setStatus("");
  updateButtons();
  $("#drop").focus(); // Clear disables itself: the focus goes back where the next drop starts
}

// ---- wiring -----------------------------------------------------------------------------------
function wire() {
  const drop = $("#drop"), input = $("#files");
  input.addEventListener("change", () => { classify(input.files); input.value = ""; });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); classify(e.dataTransfer.files); });
  // A file dropped beside the zone must not navigate away from the page (and lose the results).
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("#csv").addEventListener("click", downloadCsv);
  $("#clear").addEventListener("click", clearResults);
  loadCard();
}

document.addEventListener("DOMContentLoaded", wire);
