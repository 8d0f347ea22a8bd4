// Adapt a `metactl export --adaptable` folder to your own labels, in the browser.
//
// The folder's three graphs run with onnxruntime-web (wasm, one thread):
//   embed.onnx    model inputs -> features [N, D] (image models: also the batch's normalisation statistics)
//   adapt.onnx    features + labels int64 [N] (0..C-1) -> weight [C, D], bias [C]
//   classify.onnx model inputs + weight + bias (+ the support's statistics) -> logits, probabilities [B, C]
//   head.onnx     (text models) features + weight + bias -> logits, probabilities [B, C]
// Nothing leaves the page. The UI buttons and the test API (`window.metactl`) call the same functions.

import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

// an absolute URL: a relative wasmPaths is resolved against the module's own folder and 404s
ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", location.href).href;
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server does not give
ort.env.logLevel = "error";

const TOKENIZERS = "./node_modules/@huggingface/tokenizers/dist/tokenizers.min.mjs";
// text models classify with embed.onnx + head.onnx (features -> probabilities): classify.onnx would load the body twice
const GRAPHS = { image: ["embed.onnx", "adapt.onnx", "classify.onnx"], text: ["embed.onnx", "adapt.onnx", "head.onnx"] };
const FORMAT = 1; // the adaptable folder layout this page runs (metactl.runtime_adapt.FORMAT)
const TEXT_BATCH = 64; // texts per embed/classify call (each text's features do not depend on its batch)
const PAD_SCALE = 10; // the drawing pad is PAD_SCALE x the model's size: downscaling is an exact block average

const $ = (id) => document.getElementById(id);

/** A problem with the person's labels or examples: shown, and no graph runs. */
class SupportError extends Error {
  constructor(message) {
    super(message);
    this.name = "SupportError";
  }
}

const state = {
  base: null, // URL of the adaptable folder (ends with /)
  meta: null, // its metactl.json
  sessions: null, // {embed, adapt, classify}
  text: null, // text models: {tokenizer, prefix, suffix, maxLength, padId}
  adapted: null, // {names, weight, bias, stats}
  runs: { embed: 0, adapt: 0, classify: 0 }, // graph calls since load
  timings: {},
};

// ---------------------------------------------------------------------------------------------
// messages

function showMessage(text, kind = "error") {
  const el = $("message");
  el.textContent = text;
  el.className = text ? kind : "";
}

function showTimings() {
  const t = state.timings;
  const parts = [];
  for (const key of ["load", "tokenize", "embed", "adapt", "classify"]) {
    if (t[key] !== undefined) parts.push(`${key} ${t[key].toFixed(1)} ms`);
  }
  $("timings").textContent = parts.join(" · ");
}

/** Runs `fn`, showing its error (if any) on the page, and re-throws it for API callers. */
async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    showMessage(err instanceof SupportError ? err.message : `Error: ${err.message ?? err}`);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// loading

async function fetchOk(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${what}: ${url} answered ${response.status} ${response.statusText}`);
  return response;
}

async function sha256(bytes) {
  if (!globalThis.crypto?.subtle) return null; // only in secure contexts (https, localhost)
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchChecked(url, name, meta) {
  const bytes = new Uint8Array(await (await fetchOk(url, name)).arrayBuffer());
  const expected = meta.files?.[name];
  const actual = expected ? await sha256(bytes) : null;
  if (actual !== null && actual !== expected) {
    throw new Error(`${name} is corrupt or was changed (its sha256 differs from metactl.json's): copy the folder again`);
  }
  return bytes;
}

/** The special tokens the tokenizer's post-processor puts before and after a single text. */
function specialTokens(spec) {
  const none = { prefix: [], suffix: [] };
  const walk = (pp) => {
    if (!pp) return none;
    if (pp.type === "TemplateProcessing") {
      const out = { prefix: [], suffix: [] };
      let seen = false;
      for (const piece of pp.single) {
        if (piece.Sequence) seen = true;
        else if (piece.SpecialToken) (seen ? out.suffix : out.prefix).push(...pp.special_tokens[piece.SpecialToken.id].ids);
      }
      return out;
    }
    if (pp.type === "BertProcessing" || pp.type === "RobertaProcessing") return { prefix: [pp.cls[1]], suffix: [pp.sep[1]] };
    if (pp.type === "Sequence") {
      for (const inner of pp.processors ?? []) {
        const found = walk(inner);
        if (found.prefix.length || found.suffix.length) return found;
      }
    }
    return none;
  };
  return walk(spec.post_processor);
}

async function loadTokenizer(base, meta) {
  const { Tokenizer } = await import(TOKENIZERS);
  const name = meta.preprocessing.tokenizer ?? "tokenizer.json";
  const spec = JSON.parse(new TextDecoder().decode(await fetchChecked(new URL(name, base), name, meta)));
  const { prefix, suffix } = specialTokens(spec);
  const maxLength = Number(meta.preprocessing.max_length ?? spec.truncation?.max_length ?? 512);
  return { tokenizer: new Tokenizer(spec, {}), prefix, suffix, maxLength, padId: Number(spec.padding?.pad_id ?? 0) };
}

/** Load the adaptable folder at `url` (relative to the page): its metactl.json, its three graphs, and for text its tokenizer. */
async function load(url = "./model/") {
  return guarded(async () => {
    const t0 = performance.now();
    const base = new URL(url.endsWith("/") ? url : `${url}/`, location.href);
    $("status").textContent = `Loading ${base.pathname}…`;
    const meta = await (await fetchOk(new URL("metactl.json", base), "metactl.json")).json();
    if (meta.kind !== "adaptable") throw new Error(`${base.pathname} is not an adaptable export (kind ${meta.kind}): export it with metactl export --from RUN --adaptable`);
    if (meta.format !== FORMAT) throw new Error(`adaptable format ${meta.format}, which this page cannot run (it runs format ${FORMAT})`);
    if (meta.modality !== "image" && meta.modality !== "text") throw new Error(`modality ${meta.modality} is not supported here`);
    const sessions = {};
    for (const name of GRAPHS[meta.modality]) {
      const bytes = await fetchChecked(new URL(name, base), name, meta);
      sessions[name.replace(".onnx", "")] = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    }
    const text = meta.modality === "text" ? await loadTokenizer(base, meta) : null;
    Object.assign(state, { base, meta, sessions, text, adapted: null, runs: { embed: 0, adapt: 0, classify: 0 } });
    state.timings = { load: performance.now() - t0 };
    setupUi();
    showTimings();
    showMessage("");
    return info();
  });
}

function info() {
  const m = state.meta;
  if (!m) return { loaded: false };
  const p = m.preprocessing;
  return {
    loaded: true,
    url: state.base.href,
    modality: m.modality,
    algorithm: m.algorithm,
    features: m.features,
    trainedClasses: m.trained_classes,
    size: p.size ?? null,
    channels: p.channels ?? null,
    invert: p.invert ?? null,
    maxLength: state.text?.maxLength ?? null,
    state: [...(m.io.state ?? [])],
    adapted: state.adapted !== null,
    labels: state.adapted ? [...state.adapted.names] : [],
    runs: { ...state.runs },
    timings: { ...state.timings },
  };
}

function requireLoaded() {
  if (!state.meta) throw new Error("no model loaded: call metactl.load(url) first");
}

// ---------------------------------------------------------------------------------------------
// inputs

/** Check the support's labels before any graph runs: class ids 0..C-1, every class with an example, C >= 2. */
function checkLabels(labels, names = null) {
  const y = Array.from(labels, Number);
  if (y.length === 0) throw new SupportError("Add some examples first: the support set is empty.");
  const bad = y.find((v) => !Number.isInteger(v) || v < 0);
  if (bad !== undefined) throw new SupportError(`Labels must be class ids 0..C-1 (got ${bad}).`);
  const top = Math.max(...y) + 1;
  const count = names ? names.length : top;
  if (top > count) throw new SupportError(`Label id ${top - 1} has no name (${count} names given).`);
  const name = (i) => (names ? `"${names[i]}"` : `${i}`);
  const missing = [];
  for (let i = 0; i < count; i++) if (!y.includes(i)) missing.push(i);
  if (missing.length) {
    const list = missing.map(name).join(", ");
    throw new SupportError(`Label${missing.length > 1 ? "s" : ""} ${list} ${missing.length > 1 ? "have" : "has"} no example: add at least one to each label, or remove it.`);
  }
  if (count < 2) throw new SupportError(`Adapting needs at least 2 labels (there is ${count}: ${name(0)}).`);
  if (names && new Set(names).size !== names.length) throw new SupportError("Two labels have the same name: give each label its own name.");
  return count;
}

function flatten(values, out = []) {
  if (ArrayBuffer.isView(values)) {
    for (const v of values) out.push(v);
  } else if (Array.isArray(values)) {
    for (const v of values) flatten(v, out);
  } else {
    out.push(Number(values));
  }
  return out;
}

/** pixels (Float32Array or nested arrays, raw 0-255 as image files hold them) -> the float32 [n, C, S, S] tensor. */
function pixelTensor(pixels, n = null) {
  const p = state.meta.preprocessing;
  const per = Number(p.channels ?? 1) * p.size * p.size;
  const data = pixels instanceof Float32Array ? pixels : Float32Array.from(flatten(pixels));
  if (data.length === 0 || data.length % per !== 0) {
    throw new SupportError(`pixels: ${data.length} values is not a whole number of ${p.channels ?? 1}×${p.size}×${p.size} images.`);
  }
  const rows = data.length / per;
  if (n !== null && rows !== n) throw new SupportError(`${rows} images for ${n} labels: give one label per image.`);
  return new ort.Tensor("float32", data, [rows, Number(p.channels ?? 1), p.size, p.size]);
}

/** Token id rows as python's metactl tokenizes: no special tokens, cut to max_length minus the specials, then wrapped. */
function tokenize(texts) {
  requireLoaded();
  if (!state.text) throw new Error("tokenize: this model takes images, not text");
  const { tokenizer, prefix, suffix, maxLength } = state.text;
  const room = Math.max(maxLength - prefix.length - suffix.length, 0);
  return Array.from(texts, (t) => [...prefix, ...tokenizer.encode(String(t), { add_special_tokens: false }).ids.slice(0, room), ...suffix]);
}

/** Rows of token ids -> input_ids / attention_mask int64 [n, longest row], right-padded. */
function padRows(rows) {
  const width = Math.max(1, ...rows.map((r) => r.length));
  const ids = new BigInt64Array(rows.length * width).fill(BigInt(state.text.padId));
  const mask = new BigInt64Array(rows.length * width);
  rows.forEach((row, i) => {
    row.forEach((id, j) => {
      ids[i * width + j] = BigInt(id);
      mask[i * width + j] = 1n;
    });
  });
  const dims = [rows.length, width];
  return { input_ids: new ort.Tensor("int64", ids, dims), attention_mask: new ort.Tensor("int64", mask, dims) };
}

function textList(texts, n = null) {
  const list = Array.from(texts ?? [], String);
  if (list.length === 0) throw new SupportError("texts: give at least one text.");
  if (n !== null && list.length !== n) throw new SupportError(`${list.length} texts for ${n} labels: give one label per text.`);
  return list;
}

// ---------------------------------------------------------------------------------------------
// the three graphs

async function timed(key, fn) {
  const t0 = performance.now();
  const out = await fn();
  state.timings[key] = (state.timings[key] ?? 0) + performance.now() - t0;
  return out;
}

/** Text rows in batches of TEXT_BATCH through `session`, each batch padded to its longest row: the outputs `names`, rows concatenated. */
async function runTextBatches(session, rows, names, extra, key) {
  const parts = Object.fromEntries(names.map((n) => [n, []]));
  for (let lo = 0; lo < rows.length; lo += TEXT_BATCH) {
    const out = await timed(key, () => session.run({ ...padRows(rows.slice(lo, lo + TEXT_BATCH)), ...extra }));
    for (const n of names) parts[n].push(out[n]);
  }
  const joined = {};
  for (const n of names) {
    const width = parts[n][0].dims[1];
    const data = new Float32Array(rows.length * width);
    let offset = 0;
    for (const part of parts[n]) {
      data.set(part.data, offset);
      offset += part.data.length;
    }
    joined[n] = new ort.Tensor("float32", data, [rows.length, width]);
  }
  return joined;
}

/**
 * Adapt to a support set: `{labels: [class id per example], names?: [C label names], pixels}` (image models: raw
 * 0-255, [n, C, S, S] flat or nested) or `{labels, names?, texts: [n strings]}` (text models). The labels are checked
 * before any graph runs. Keeps the head (and the support's statistics) for classify; returns the timings.
 */
async function adapt(support) {
  return guarded(async () => {
    requireLoaded();
    const { labels, names = null } = support ?? {};
    const count = checkLabels(labels ?? [], names);
    const y = Array.from(labels, Number);
    const { embed, adapt: adaptSession } = state.sessions;
    state.timings = { load: state.timings.load };
    let features;
    let stats = {};
    if (state.text) {
      const texts = textList(support.texts, y.length);
      const rows = await timed("tokenize", async () => tokenize(texts));
      ({ features } = await runTextBatches(embed, rows, ["features"], {}, "embed"));
    } else {
      const pixels = pixelTensor(support.pixels, y.length);
      const out = await timed("embed", () => embed.run({ pixels })); // one call: the statistics are the whole support's
      features = out.features;
      stats = Object.fromEntries(state.meta.io.state.map((k) => [k, out[k]]));
    }
    state.runs.embed += 1;
    const labelTensor = new ort.Tensor("int64", BigInt64Array.from(y, BigInt), [y.length]);
    const head = await timed("adapt", () => adaptSession.run({ features, labels: labelTensor }));
    state.runs.adapt += 1;
    const labelNames = names ? names.map(String) : Array.from({ length: count }, (_, i) => String(i));
    state.adapted = { names: labelNames, weight: head.weight, bias: head.bias, stats };
    showTimings();
    showMessage(`Adapted to ${count} labels from ${y.length} examples.`, "ok");
    $("classify").disabled = false;
    return { labels: labelNames, examples: y.length, timings: { ...state.timings } };
  });
}

function rowsOf(tensor) {
  const [n, c] = tensor.dims;
  return Array.from({ length: n }, (_, i) => Array.from(tensor.data.subarray(i * c, (i + 1) * c)));
}

/** Classify `{pixels}` or `{texts}` with the adapted head: `{labels, probabilities: [n][C], logits, timings}`. */
async function classify(inputs) {
  return guarded(async () => {
    requireLoaded();
    if (!state.adapted) throw new SupportError("Adapt first: add examples to your labels and press Adapt.");
    const { weight, bias, stats, names } = state.adapted;
    delete state.timings.classify;
    let out;
    if (state.text) {
      const { features } = await runTextBatches(state.sessions.embed, tokenize(textList(inputs?.texts)), ["features"], {}, "classify");
      out = await timed("classify", () => state.sessions.head.run({ features, weight, bias }));
    } else {
      out = await timed("classify", () => state.sessions.classify.run({ pixels: pixelTensor(inputs?.pixels), weight, bias, ...stats }));
    }
    state.runs.classify += 1;
    showTimings();
    const result = { labels: [...names], probabilities: rowsOf(out.probabilities), logits: rowsOf(out.logits), timings: { ...state.timings } };
    showResults(result, inputs?.texts ?? null);
    return result;
  });
}

function head() {
  if (!state.adapted) return null;
  const { weight, bias, names } = state.adapted;
  return { labels: [...names], weight: rowsOf(weight), bias: Array.from(bias.data) };
}

function showResults(result, texts) {
  const table = document.createElement("table");
  table.id = "probabilities";
  const headRow = table.createTHead().insertRow();
  headRow.appendChild(document.createElement("th")).textContent = texts ? "text" : "input";
  for (const label of result.labels) headRow.appendChild(document.createElement("th")).textContent = label;
  const body = table.createTBody();
  result.probabilities.forEach((probs, i) => {
    const row = body.insertRow();
    row.insertCell().textContent = texts ? texts[i] : result.probabilities.length > 1 ? `image ${i + 1}` : "drawing";
    const best = probs.indexOf(Math.max(...probs));
    probs.forEach((p, j) => {
      const cell = row.insertCell();
      cell.textContent = `${(100 * p).toFixed(1)}%`;
      cell.dataset.p = String(p);
      if (j === best) cell.className = "top";
    });
  });
  $("results").replaceChildren(table);
}

// ---------------------------------------------------------------------------------------------
// image UI: a drawing pad, labels with thumbnails, file drop/upload

const imageLabels = []; // [{name, examples: [Float32Array of channels*size*size]}]

function colors() {
  const inverted = state.meta.preprocessing.invert !== false; // files hold dark ink on light paper
  return inverted ? { paper: "#ffffff", ink: "#000000" } : { paper: "#000000", ink: "#ffffff" };
}

function clearPad() {
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  ctx.fillStyle = colors().paper;
  ctx.fillRect(0, 0, pad.width, pad.height);
}

/** The canvas `source` (PAD_SCALE x size) as raw pixels [channels, size, size]: exact PAD_SCALE x PAD_SCALE block averages. */
function canvasPixels(source) {
  const p = state.meta.preprocessing;
  const size = p.size;
  const channels = Number(p.channels ?? 1);
  const rgba = source.getContext("2d").getImageData(0, 0, source.width, source.height).data;
  const out = new Float32Array(channels * size * size);
  const block = PAD_SCALE * PAD_SCALE;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const sum = [0, 0, 0];
      for (let dy = 0; dy < PAD_SCALE; dy++) {
        for (let dx = 0; dx < PAD_SCALE; dx++) {
          const k = 4 * ((y * PAD_SCALE + dy) * source.width + x * PAD_SCALE + dx);
          sum[0] += rgba[k];
          sum[1] += rgba[k + 1];
          sum[2] += rgba[k + 2];
        }
      }
      const [r, g, b] = sum.map((s) => s / block);
      if (channels === 1) {
        out[y * size + x] = Math.round((r * 299 + g * 587 + b * 114) / 1000); // PIL's convert("L")
      } else {
        out[y * size + x] = Math.round(r);
        out[size * size + y * size + x] = Math.round(g);
        out[2 * size * size + y * size + x] = Math.round(b);
      }
    }
  }
  return out;
}

/** An image file drawn over white (transparency over white) and stretched to the square `canvas`, as metactl resizes.
 * A file of the model's own size is drawn without smoothing: its pixels come back exactly. */
async function drawFile(file, canvas) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const size = state.meta.preprocessing.size;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = !(bitmap.width === size && bitmap.height === size);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
}

async function filePixels(file) {
  const scratch = document.createElement("canvas");
  scratch.width = scratch.height = state.meta.preprocessing.size * PAD_SCALE;
  await drawFile(file, scratch);
  return canvasPixels(scratch);
}

function thumbnail(pixels) {
  const p = state.meta.preprocessing;
  const size = p.size;
  const channels = Number(p.channels ?? 1);
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(size, size);
  for (let i = 0; i < size * size; i++) {
    const [r, g, b] = channels === 1 ? [pixels[i], pixels[i], pixels[i]] : [pixels[i], pixels[size * size + i], pixels[2 * size * size + i]];
    image.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function findOrCreateLabel(name) {
  let label = imageLabels.find((l) => l.name === name);
  if (!label) {
    label = { name, examples: [] };
    imageLabels.push(label);
  }
  return label;
}

function labelName() {
  const name = $("label-name").value.trim();
  if (!name) throw new SupportError("Type a label name first.");
  return name;
}

function renderImageLabels() {
  const root = $("image-labels");
  root.replaceChildren();
  imageLabels.forEach((label, index) => {
    const card = document.createElement("div");
    card.className = "card label";
    card.dataset.label = label.name;
    const header = document.createElement("header");
    const title = document.createElement("strong");
    title.textContent = label.name;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${label.examples.length} example${label.examples.length === 1 ? "" : "s"}`;
    const remove = document.createElement("button");
    remove.textContent = "Remove";
    remove.addEventListener("click", () => {
      imageLabels.splice(index, 1);
      renderImageLabels();
    });
    header.append(title, count, remove);
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    for (const ex of label.examples) thumbs.appendChild(thumbnail(ex));
    const add = document.createElement("button");
    add.textContent = "Add drawing";
    add.addEventListener("click", () => addPadTo(label.name));
    const files = document.createElement("input");
    files.type = "file";
    files.accept = "image/*";
    files.multiple = true;
    files.hidden = true;
    const filesButton = document.createElement("button");
    filesButton.textContent = "Add files…";
    filesButton.addEventListener("click", () => files.click());
    files.addEventListener("change", () => addFiles(label.name, files.files));
    card.addEventListener("dragover", (e) => {
      e.preventDefault();
      card.classList.add("dragover");
    });
    card.addEventListener("dragleave", () => card.classList.remove("dragover"));
    card.addEventListener("drop", (e) => {
      e.preventDefault();
      card.classList.remove("dragover");
      addFiles(label.name, e.dataTransfer.files);
    });
    const buttons = document.createElement("div");
    buttons.className = "row";
    buttons.style.gap = ".4rem";
    buttons.append(add, filesButton, files);
    card.append(header, thumbs, buttons);
    root.appendChild(card);
  });
}

function addPadTo(name) {
  findOrCreateLabel(name).examples.push(canvasPixels($("pad")));
  renderImageLabels();
  clearPad();
  showMessage("");
}

async function addFiles(name, files) {
  const images = Array.from(files ?? []).filter((f) => f.type.startsWith("image/"));
  if (!images.length) return;
  try {
    const label = findOrCreateLabel(name);
    for (const file of images) label.examples.push(await filePixels(file));
    showMessage("");
  } catch (err) {
    showMessage(`Cannot read that image: ${err.message ?? err}`);
  } finally {
    renderImageLabels();
  }
}

/** The image UI's labels as an adapt() support: names, a class id per example, the examples' pixels. */
function imageSupport() {
  const names = imageLabels.map((l) => l.name);
  const labels = imageLabels.flatMap((l, i) => l.examples.map(() => i));
  const per = Number(state.meta.preprocessing.channels ?? 1) * state.meta.preprocessing.size ** 2;
  const pixels = new Float32Array(labels.length * per);
  let offset = 0;
  for (const l of imageLabels) {
    for (const ex of l.examples) {
      pixels.set(ex, offset);
      offset += per;
    }
  }
  return { names, labels, pixels };
}

function setupPad() {
  const pad = $("pad");
  pad.width = pad.height = state.meta.preprocessing.size * PAD_SCALE;
  clearPad();
  if (pad.dataset.ready) return;
  pad.dataset.ready = "1";
  const ctx = pad.getContext("2d");
  let last = null;
  const point = (e) => {
    const r = pad.getBoundingClientRect();
    return [((e.clientX - r.left) * pad.width) / r.width, ((e.clientY - r.top) * pad.height) / r.height];
  };
  const stroke = (from, to) => {
    ctx.strokeStyle = colors().ink;
    ctx.lineWidth = pad.width / 11; // thick: about 2.5 pixels at the model's size
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
  };
  pad.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    last = point(e);
    stroke(last, last);
  });
  pad.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = point(e);
    stroke(last, p);
    last = p;
  });
  for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => (last = null));
  pad.addEventListener("dragover", (e) => {
    e.preventDefault();
    pad.classList.add("dragover");
  });
  pad.addEventListener("dragleave", () => pad.classList.remove("dragover"));
  pad.addEventListener("drop", async (e) => {
    e.preventDefault();
    pad.classList.remove("dragover");
    const file = Array.from(e.dataTransfer.files).find((f) => f.type.startsWith("image/"));
    if (file) await drawFile(file, pad);
  });
}

// ---------------------------------------------------------------------------------------------
// text UI: a text area per label

function addTextLabel(name = "", examples = "") {
  const root = $("text-labels");
  const card = document.createElement("div");
  card.className = "card text-label";
  const input = document.createElement("input");
  input.type = "text";
  input.className = "text-label-name";
  input.placeholder = `label ${root.children.length + 1}`;
  input.value = name;
  const area = document.createElement("textarea");
  area.className = "text-label-examples";
  area.placeholder = "one example per line";
  area.value = examples;
  const remove = document.createElement("button");
  remove.textContent = "Remove label";
  remove.addEventListener("click", () => card.remove());
  card.append(input, area, remove);
  root.appendChild(card);
}

function textSupport() {
  const cards = Array.from(document.querySelectorAll("#text-labels .text-label"));
  const names = cards.map((c, i) => c.querySelector("input").value.trim() || `label ${i + 1}`);
  const labels = [];
  const texts = [];
  cards.forEach((c, i) => {
    for (const line of c.querySelector("textarea").value.split("\n")) {
      if (line.trim()) {
        labels.push(i);
        texts.push(line.trim());
      }
    }
  });
  return { names, labels, texts };
}

function queryTexts() {
  const texts = $("query-text").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) throw new SupportError("Type a text to classify.");
  return texts;
}

// ---------------------------------------------------------------------------------------------
// wiring

const uiSupport = () => (state.text ? textSupport() : imageSupport());
const uiQuery = () => (state.text ? { texts: queryTexts() } : { pixels: canvasPixels($("pad")) });

function setupUi() {
  const m = state.meta;
  const image = m.modality === "image";
  $("image-ui").hidden = !image;
  $("text-ui").hidden = image;
  $("actions").hidden = false;
  $("classify").disabled = true;
  $("results").replaceChildren();
  const p = m.preprocessing;
  const what = image ? `${p.size}×${p.size}${Number(p.channels ?? 1) === 3 ? " color" : " grayscale"} images` : `texts (up to ${state.text.maxLength} tokens)`;
  $("status").textContent = `Model: ${state.base.pathname} · ${m.algorithm} · ${what} · ${m.features} features`;
  if (image) {
    imageLabels.length = 0;
    renderImageLabels();
    setupPad();
  } else if (!$("text-labels").children.length) {
    addTextLabel();
    addTextLabel();
  }
}

function onClick(id, fn) {
  $(id).addEventListener("click", () => {
    guarded(fn).catch(() => {}); // shown on the page by guarded
  });
}

onClick("adapt", () => adapt(uiSupport()));
onClick("classify", () => classify(uiQuery()));
onClick("add-example", () => addPadTo(labelName()));
onClick("new-label", () => {
  findOrCreateLabel(labelName());
  renderImageLabels();
});
onClick("clear", () => clearPad());
onClick("add-text-label", () => addTextLabel());
$("open-image-button").addEventListener("click", () => $("open-image").click());
$("open-image").addEventListener("change", async () => {
  const file = $("open-image").files[0];
  if (file) await drawFile(file, $("pad"));
});

const modelUrl = new URLSearchParams(location.search).get("model") ?? "./model/";
const ready = load(modelUrl).then(
  (loaded) => loaded,
  (err) => ({ loaded: false, error: String(err.message ?? err) }),
);

// the test API: the buttons call these same functions
window.metactl = {
  ready,
  load,
  adapt,
  classify,
  tokenize,
  checkLabels,
  info,
  head,
  uiSupport,
  padPixels: () => canvasPixels($("pad")),
};
