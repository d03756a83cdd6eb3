// sanet serve page: a calibrated model's confidence map and unsure pixels (docs/trust.md), and
// the drift line (docs/deploy.md, "Drift"). Loaded before app.js, which adds TRUST_LAYERS to its
// LAYERS. No layer shows for an uncalibrated model: GET v1/model then has "calibration": null
// and /v1/segment sends no maps; its drift line says "no reference".
"use strict";

// Unsure pixels are hatched (diagonal stripes of dark and light grey) rather than flat grey:
// a flat grey could be a class colour (grey classes, or background shown as 140,140,140).
const HATCH = [[31, 41, 55], [229, 231, 235]];

// Stripe width in image pixels: about 1/120 of the long side, so that the stripes stay visible
// when a large photo is shown small.
function hatchBand(width, height) {
  return Math.max(2, Math.round(Math.max(width, height) / 120));
}

const TRUST_LAYERS = [
  {
    id: "confidence",
    label: "Confidence (light = sure)",
    visible: false,
    available: (m) => Boolean(m && m.calibration),
    paint(rgba, res) {
      if (!res.confidence) return;
      for (let i = 0; i < res.confidence.length; i++) {
        const g = res.confidence[i];
        const j = 4 * i;
        rgba[j] = g; rgba[j + 1] = g; rgba[j + 2] = g; rgba[j + 3] = 255;
      }
    },
  },
  {
    id: "unsure",
    label: "Unsure pixels (hatched)",
    visible: true,
    available: (m) => Boolean(m && m.calibration && m.calibration.threshold != null),
    paint(rgba, res) {
      if (!res.unsure) return;
      const { width, height } = res;
      const band = hatchBand(width, height);
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const i = y * width + x;
          if (!res.unsure[i]) continue;
          const c = HATCH[Math.floor((x + y) / band) % 2];
          const j = 4 * i;
          rgba[j] = c[0]; rgba[j + 1] = c[1]; rgba[j + 2] = c[2]; rgba[j + 3] = 255;
        }
      }
    },
  },
];

// The per-pixel maps of an answer: {confidence: grey values 0..255, unsure: 255 or 0}, each a
// Uint8Array or null (classIds reads any 8-bit PNG: without a palette it is the grey value).
async function trustMaps(body) {
  const read = async (b64) => b64
    ? classIds(Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0)), body.width, body.height)
    : null;
  return {
    confidence: await read(body.confidence_png_base64),
    unsure: await read(body.unsure_png_base64),
  };
}

// The unsure share and its guarantee, with the assumption it rests on, in one short paragraph.
function showTrust(body) {
  const note = $("trust-note");
  note.hidden = body == null || body.unsure_share == null;
  if (note.hidden) return;
  const percent = (x) => `${(100 * x).toFixed(1)} %`;
  $("unsure-share").textContent = `${percent(body.unsure_share)} of the pixels are unsure`;
  $("unsure-why").textContent = ` (calibrated confidence below ${Number(body.threshold.toPrecision(6))}).` +
    ` Expected share of sure-and-wrong pixels per image: at most ${percent(body.alpha)};` +
    ` this guarantee ${body.assumption}.`;
}

// The drift line: whether the last requests are still like the calibration images ("in
// distribution", "drifting"), with the statistic and its threshold; "collecting" until the
// window is full, "no reference" and why for a model without reference statistics.
function showDrift(drift) {
  const line = $("drift");
  line.hidden = !drift;
  if (!drift) return;
  line.dataset.status = drift.status;
  $("drift-status").textContent = `Drift: ${drift.status}.`;
  const sentence = drift.detail.replace(/^[^:]*:\s*/, "");
  $("drift-detail").textContent = sentence.charAt(0).toUpperCase() + sentence.slice(1);
}

// After each answer: the server's drift state now (GET healthz).
async function refreshDrift() {
  try {
    const response = await fetch("healthz");
    if (response.ok) showDrift((await response.json()).drift);
  } catch {
    // the server did not answer: the next answer tries again
  }
}
