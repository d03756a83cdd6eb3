// sanet serve page: upload an image to /v1/segment, lay the returned mask over it.
// Relative URLs, so the page also works behind a reverse proxy under a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null; // GET v1/model: class names, palette, backend
let latest = 0; // only the newest upload may update the page

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

function swatch(rgb) {
  const span = document.createElement("span");
  span.className = "swatch";
  span.style.background = `rgb(${rgb.join(",")})`;
  return span;
}

async function loadModel() {
  const response = await fetch("v1/model");
  if (response.status === 503) { // still loading: try again as the server asks
    const wait = Number(response.headers.get("Retry-After") || 1);
    setTimeout(loadModel, wait * 1000);
    return;
  }
  model = await response.json();
  const m = model.model || {};
  $("model-name").textContent =
    [m.name, m.backbone, `${model.num_classes} classes`, model.backend].filter(Boolean).join(" · ");
  const legend = $("legend");
  legend.replaceChildren(...model.class_names.map((name, id) => {
    const li = document.createElement("li");
    li.dataset.id = id;
    li.append(swatch(model.palette[id]), name);
    return li;
  }));
}

function showClasses(classes) {
  const rows = classes.map((c) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.append(swatch(model ? model.palette[c.id] : [128, 128, 128]), c.name);
    const pixels = document.createElement("td");
    pixels.className = "num";
    pixels.textContent = c.pixels.toLocaleString();
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
  for (const li of $("legend").children) {
    li.classList.toggle("present", present.has(Number(li.dataset.id)));
  }
}

async function segment(file) {
  const ticket = ++latest;
  document.body.dataset.state = "busy";
  $("stage").hidden = true;
  $("mask").hidden = true;
  const photo = $("photo");
  photo.src = URL.createObjectURL(file);
  photo.decode().then(() => { // size the stage to the photo's shape (EXIF rotation applied)
    $("stage").style.setProperty("--ratio", photo.naturalWidth / photo.naturalHeight);
    $("stage").hidden = false;
  }, () => {}); // not an image: the server's answer says why
  setStatus(`Segmenting ${file.name}…`);
  const form = new FormData();
  form.append("image", file);
  let response, body;
  try {
    response = await fetch("v1/segment?format=json", { method: "POST", body: form });
    body = await response.json().catch(() => ({}));
  } catch (err) {
    if (ticket === latest) setStatus(`The server did not answer (${err}).`, true);
    return;
  }
  if (ticket !== latest) return;
  if (!response.ok) {
    document.body.dataset.state = "error";
    setStatus(`${response.status}: ${body.detail || response.statusText}`, true);
    return;
  }
  const mask = $("mask");
  mask.src = `data:image/png;base64,${body.mask_png_base64}`;
  await mask.decode();
  mask.hidden = false;
  showClasses(body.classes);
  setStatus(`${file.name}: ${body.width}×${body.height} px, ${body.seconds.toFixed(2)} s on ` +
            `${model ? model.backend : "the server"}.`);
  document.body.dataset.state = "done";
}

function setOpacity() {
  const value = $("opacity").value;
  $("mask").style.opacity = value / 100;
  $("opacity-value").textContent = `${value}%`;
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) segment(e.target.files[0]);
});
$("opacity").addEventListener("input", setOpacity);
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

setOpacity();
loadModel().catch((err) => setStatus(`Cannot reach the server (${err}).`, true));
