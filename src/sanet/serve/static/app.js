// sanet serve page: upload an image to /v1/segment, lay the returned mask over it.
// Relative URLs, so the page also works behind a reverse proxy under a path prefix.
// No dependencies and no build step: this file is served as it is.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null; // GET v1/model: class names, palette, limits, backend
let latest = 0; // only the newest upload may update the page
let result = null; // the shown result: {file, body, ids, width, height}
let colours = []; // display colour per class id: the model's palette, brightened
const hiddenClasses = new Set(); // class ids the user switched off (legend)
let ticker = null; // the elapsed-time timer while a request runs
const DOWNLOADS = ["dl-mask", "dl-confidence", "dl-overlay", "dl-json"];

// --- Overlay layers -------------------------------------------------------------------------
// The overlay is painted from this list, in order; each layer available for the model has a
// checkbox. A calibrated model adds a confidence map and its unsure pixels (trust.js).
const LAYERS = [
  {
    id: "classes",
    label: "Class colours",
    visible: true,
    available: () => true,
    paint(rgba, res) {
      const ids = res.ids;
      for (let i = 0; i < ids.length; i++) {
        const k = ids[i];
        if (hiddenClasses.has(k) || !colours[k]) continue; // hidden and ignore (255): transparent
        const c = colours[k];
        const j = 4 * i;
        rgba[j] = c[0]; rgba[j + 1] = c[1]; rgba[j + 2] = c[2]; rgba[j + 3] = 255;
      }
    },
  },
  ...TRUST_LAYERS,
];

// --- Status line ----------------------------------------------------------------------------
function setStatus(state, text, detail = "") {
  document.body.dataset.state = state;
  $("status-text").textContent = text;
  $("status-detail").textContent = detail;
}

function startTicker(name) {
  const start = performance.now();
  const tick = () => {
    const s = (performance.now() - start) / 1000;
    $("status-text").textContent = `Segmenting ${name}… ${s.toFixed(1)} s`;
  };
  tick();
  ticker = setInterval(tick, 100);
}

function stopTicker() {
  clearInterval(ticker);
  ticker = null;
}

// What a refused or failed request means, in plain words, and what to do.
function explain(status, detail, retryAfter) {
  const say = {
    400: "The server could not read the upload.",
    408: "The upload took too long. Check your connection and try again.",
    413: "This image is too large for the server.",
    415: "The server cannot read this file as an image.",
    422: "The upload did not contain an image. Reload the page and try again.",
    500: "The server has a problem and cannot segment images right now.",
    503: `The server is busy. Try again in ${retryAfter || "a few"} seconds.`,
    504: "The server took too long on this image. Try again, or use a smaller image.",
  }[status] || `The server refused the image (HTTP ${status}).`;
  return [say, detail || ""];
}

// --- Model and legend -----------------------------------------------------------------------
function brighten([r, g, b]) {
  // Dark palette colours (VOC's 128,0,0 ...) vanish on photos: the same hue at a lightness of
  // at least 55 % (HSL), fully saturated colours stay so; light colours are kept.
  const [R, G, B] = [r / 255, g / 255, b / 255];
  const max = Math.max(R, G, B), min = Math.min(R, G, B);
  const light = (max + min) / 2;
  if (light >= 0.55) return [r, g, b];
  if (max === min) return [140, 140, 140];
  const sat = (max - min) / (1 - Math.abs(2 * light - 1));
  let hue = max === R ? (G - B) / (max - min) : max === G ? 2 + (B - R) / (max - min) : 4 + (R - G) / (max - min);
  hue = ((hue * 60) % 360 + 360) % 360;
  const l = 0.55;
  const chroma = (1 - Math.abs(2 * l - 1)) * sat;
  const x = chroma * (1 - Math.abs(((hue / 60) % 2) - 1));
  const m = l - chroma / 2;
  const [r1, g1, b1] = hue < 60 ? [chroma, x, 0] : hue < 120 ? [x, chroma, 0] : hue < 180 ? [0, chroma, x]
    : hue < 240 ? [0, x, chroma] : hue < 300 ? [x, 0, chroma] : [chroma, 0, x];
  return [r1, g1, b1].map((v) => Math.round(255 * (v + m)));
}

function isBackground(name) {
  return /^_*(background|bg)_*$/i.test(name.trim());
}

function swatch(rgb) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = `rgb(${rgb.join(",")})`;
  return span;
}

function bytesText(bytes) {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
}

function pixelsText(pixels) {
  return pixels >= 1e6 ? `${(pixels / 1e6).toFixed(1)} megapixels` : `${pixels.toLocaleString("en")} pixels`;
}

async function loadModel() {
  const response = await fetch("v1/model");
  if (response.status === 503) { // still loading: try again as the server asks
    const wait = Number(response.headers.get("Retry-After") || 1);
    setTimeout(loadModel, wait * 1000);
    return;
  }
  const body = await response.json();
  if (!response.ok) {
    setStatus("error", "The server cannot segment images right now.", body.detail || "");
    return;
  }
  model = body;
  const m = model.model || {};
  $("model-name").textContent =
    [m.name, m.backbone, `${model.num_classes} classes`, model.backend].filter(Boolean).join(" · ");
  const lim = model.limits || {};
  $("limits").textContent = `Images up to ${bytesText(lim.max_upload_bytes)} and ` +
    `${pixelsText(lim.max_pixels)}.`;
  colours = model.palette.map(brighten);
  model.class_names.forEach((name, id) => { if (isBackground(name)) hiddenClasses.add(id); });
  $("legend").replaceChildren(...model.class_names.map((name, id) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.id = id;
    button.setAttribute("aria-pressed", String(!hiddenClasses.has(id)));
    button.title = "show or hide this class in the overlay";
    button.append(swatch(colours[id]), name);
    button.addEventListener("click", () => toggleClass(id, button));
    li.append(button);
    return li;
  }));
  buildLayerToggles();
  $("dl-confidence").hidden = !model.calibration;
  showDrift(model.drift);
}

function toggleClass(id, button) {
  if (hiddenClasses.has(id)) hiddenClasses.delete(id); else hiddenClasses.add(id);
  button.setAttribute("aria-pressed", String(!hiddenClasses.has(id)));
  render();
}

function buildLayerToggles() {
  $("layers").replaceChildren(...LAYERS.filter((l) => l.available(model)).map((layer) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = layer.visible;
    box.dataset.layer = layer.id;
    box.addEventListener("change", () => { layer.visible = box.checked; render(); });
    label.append(box, layer.label);
    return label;
  }));
}

// --- The result -----------------------------------------------------------------------------
function clearResult(message) {
  result = null;
  for (const id of DOWNLOADS) $(id).disabled = true;
  showTrust(null);
  const row = document.createElement("tr");
  row.className = "empty";
  const cell = document.createElement("td");
  cell.colSpan = 3;
  cell.className = "muted";
  cell.textContent = message;
  row.append(cell);
  $("classes").tBodies[0].replaceChildren(row);
  for (const button of $("legend").querySelectorAll("button")) button.classList.remove("present");
  for (const id of ["overlay", "mask-view"]) {
    const canvas = $(id);
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
}

function showClasses(classes) {
  const rows = classes.map((c) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.append(swatch(colours[c.id] || [128, 128, 128]), c.name);
    const pixels = document.createElement("td");
    pixels.className = "num";
    pixels.textContent = c.pixels.toLocaleString("en");
    const share = document.createElement("td");
    share.className = "num share";
    share.textContent = `${(100 * c.fraction).toFixed(1)} %`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${100 * c.fraction}%`;
    share.append(bar);
    tr.append(name, pixels, share);
    return tr;
  });
  $("classes").tBodies[0].replaceChildren(...rows);
  const present = new Set(classes.map((c) => c.id));
  for (const button of $("legend").querySelectorAll("button")) {
    button.classList.toggle("present", present.has(Number(button.dataset.id)));
  }
}

// Class ids of an index PNG (mode P, one byte per pixel): the same PNG with a grey palette
// (entry i = i, i, i) decodes to pixels whose red value is the class id.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  out.set([...type].map((ch) => ch.charCodeAt(0)), 4);
  out.set(data, 8);
  let crc = 0xffffffff;
  for (const byte of out.subarray(4, 8 + data.length)) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  view.setUint32(8 + data.length, (crc ^ 0xffffffff) >>> 0);
  return out;
}

async function classIds(pngBytes, width, height) {
  const view = new DataView(pngBytes.buffer);
  const parts = [pngBytes.subarray(0, 8)];
  for (let pos = 8; pos < pngBytes.length;) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...pngBytes.subarray(pos + 4, pos + 8));
    const end = pos + 12 + length;
    if (type === "PLTE") {
      const grey = new Uint8Array(length);
      for (let i = 0; i < length; i++) grey[i] = Math.floor(i / 3);
      parts.push(pngChunk("PLTE", grey));
    } else if (type !== "tRNS") {
      parts.push(pngBytes.subarray(pos, end));
    }
    pos = end;
  }
  const bitmap = await createImageBitmap(new Blob(parts, { type: "image/png" }),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const ids = new Uint8Array(width * height);
  for (let i = 0; i < ids.length; i++) ids[i] = rgba[4 * i];
  return ids;
}

function render() {
  if (!result) return;
  const { width, height } = result;
  const image = new ImageData(width, height);
  for (const layer of LAYERS) if (layer.visible && layer.available(model)) layer.paint(image.data, result);
  for (const id of ["overlay", "mask-view"]) {
    const canvas = $(id);
    canvas.width = width;
    canvas.height = height;
    canvas.getContext("2d").putImageData(image, 0, 0);
  }
}

function setOpacity() {
  const value = $("opacity").value;
  $("overlay").style.opacity = value / 100;
  $("opacity-value").textContent = `${value}%`;
}

// --- One upload -----------------------------------------------------------------------------
async function segment(file) {
  const ticket = ++latest;
  stopTicker();
  clearResult(`Working on ${file.name}…`);
  const photo = $("photo");
  if (photo.src) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(file);
  let size = null;
  try {
    await photo.decode(); // size the stage to the photo's shape (EXIF rotation applied)
    size = [photo.naturalWidth, photo.naturalHeight];
    $("stage").style.setProperty("--ratio", size[0] / size[1]);
    $("stage").hidden = false;
  } catch {
    $("stage").hidden = true; // not an image the browser shows: the server's answer says why
  }
  if (ticket !== latest) return;
  const lim = (model && model.limits) || {};
  if (lim.max_upload_bytes && file.size > lim.max_upload_bytes) {
    clearResult("No result.");
    setStatus("error", `${file.name} is ${bytesText(file.size)}; the server accepts images up ` +
      `to ${bytesText(lim.max_upload_bytes)}.`, "Choose a smaller image, or save it as a JPEG.");
    return;
  }
  if (size && lim.max_pixels && size[0] * size[1] > lim.max_pixels) {
    clearResult("No result.");
    setStatus("error", `${file.name} has ${pixelsText(size[0] * size[1])}; the server accepts ` +
      `up to ${pixelsText(lim.max_pixels)}.`,
      "Make the image smaller in an image editor, then choose it again.");
    return;
  }
  setStatus("busy", "");
  startTicker(file.name);
  const form = new FormData();
  form.append("image", file);
  let response, body;
  try {
    response = await fetch("v1/segment?format=json", { method: "POST", body: form });
    body = await response.json().catch(() => ({}));
  } catch {
    if (ticket !== latest) return;
    stopTicker();
    clearResult("No result.");
    setStatus("error", "The server did not answer.",
      "Check that sanet serve is still running, then choose the image again.");
    return;
  }
  if (ticket !== latest) return;
  stopTicker();
  if (!response.ok) {
    clearResult("No result.");
    const [say, detail] = explain(response.status, body.detail, response.headers.get("Retry-After"));
    setStatus("error", say, detail);
    return;
  }
  const png = Uint8Array.from(atob(body.mask_png_base64), (ch) => ch.charCodeAt(0));
  const ids = await classIds(png, body.width, body.height);
  const maps = await trustMaps(body);
  if (ticket !== latest) return;
  result = { file, body, png, ids, ...maps, width: body.width, height: body.height };
  render();
  showClasses(body.classes);
  showTrust(body);
  refreshDrift();
  for (const id of DOWNLOADS) $(id).disabled = false;
  const scale = body.scale < 1 ? `, predicted at ${Math.round(100 * body.scale)} % size` : "";
  setStatus("done", `${file.name}: ${body.width}×${body.height} px, ${body.seconds.toFixed(2)} s` +
    ` on ${model ? model.backend : "the server"}${scale}.`);
}

// --- Downloads ------------------------------------------------------------------------------
function stem() {
  return result.file.name.replace(/\.[^.]*$/, "") || "image";
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

$("dl-mask").addEventListener("click", () => {
  if (result) download(new Blob([result.png], { type: "image/png" }), `${stem()}-mask.png`);
});
$("dl-confidence").addEventListener("click", () => {
  if (!result || !result.body.confidence_png_base64) return;
  const png = Uint8Array.from(atob(result.body.confidence_png_base64), (ch) => ch.charCodeAt(0));
  download(new Blob([png], { type: "image/png" }), `${stem()}-confidence.png`);
});
$("dl-overlay").addEventListener("click", () => {
  if (!result) return;
  const canvas = document.createElement("canvas");
  canvas.width = result.width;
  canvas.height = result.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage($("photo"), 0, 0, result.width, result.height);
  ctx.globalAlpha = $("opacity").value / 100;
  ctx.drawImage($("overlay"), 0, 0);
  canvas.toBlob((blob) => download(blob, `${stem()}-overlay.png`), "image/png");
});
$("dl-json").addEventListener("click", () => {
  if (!result) return;
  const summary = { ...result.body };
  for (const key of Object.keys(summary)) if (key.endsWith("_png_base64")) delete summary[key];
  const text = JSON.stringify({ file: result.file.name, ...summary }, null, 2);
  download(new Blob([text], { type: "application/json" }), `${stem()}-classes.json`);
});

// --- Wiring ---------------------------------------------------------------------------------
$("file").addEventListener("change", (e) => {
  if (e.target.files.length) segment(e.target.files[0]);
  e.target.value = ""; // choosing the same file again is a new upload
});
$("opacity").addEventListener("input", setOpacity);
for (const radio of document.querySelectorAll("input[name=view]")) {
  radio.addEventListener("change", () => { $("stage").dataset.view = radio.value; });
}
// Dropping anywhere on the page works; the drop zone shows where.
document.addEventListener("dragover", (e) => {
  e.preventDefault();
  $("drop").classList.add("over");
});
document.addEventListener("dragleave", () => $("drop").classList.remove("over"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  if (e.dataTransfer.files.length) segment(e.dataTransfer.files[0]);
});

buildLayerToggles();
setOpacity();
loadModel().catch(() => setStatus("error", "The server did not answer.",
  "Check that sanet serve is running, then reload the page."));
