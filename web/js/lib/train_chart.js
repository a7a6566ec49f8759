// Pure logic for the Locked Tuning node's live chart: fold `comfyui_lit.train` events into a small, JSON-safe
// state (kept in node.properties so it survives a page reload) and lay that state out as pixel polylines.
// No DOM here: Node's test runner imports this file directly.

export const TRAIN_EVENT = "comfyui_lit.train";
export const STATE_VERSION = 1;
// Enough points for a smooth curve in a ~400 px wide node while keeping saved workflows small.
export const MAX_POINTS = 200;

// Validation series drawn on the right axis (0..100 %), in legend order.
// The two directions often score the same on a small validation set: the txt→img series are dashed with round
// markers, so a series lying on top of the other still shows.
export const VAL_SERIES = [
  { key: "i2t_r@1", label: "img→txt R@1", color: "#7ee787", dash: [], marker: "square" },
  { key: "t2i_r@1", label: "txt→img R@1", color: "#f2cc60", dash: [5, 3], marker: "circle" },
  { key: "zero_shot_acc", label: "zero-shot acc", color: "#ff9bce", dash: [], marker: "square" },
  { key: "i2t_r@5", label: "img→txt R@5", color: "#56d4dd", dash: [], marker: "square" },
  { key: "t2i_r@5", label: "txt→img R@5", color: "#d2a8ff", dash: [5, 3], marker: "circle" },
];
export const LOSS_COLOR = "#79c0ff";

export function emptyTrainState() {
  return { version: STATE_VERSION, step: 0, total: 0, done: false, loss: [], val: {}, last: {}, final: null,
           report: "" };
}

function finite(v) {
  return typeof v === "number" && Number.isFinite(v);
}

/** Keep every other point (always the newest) until a series fits in `max` points. */
export function decimate(points, max = MAX_POINTS) {
  let out = points;
  while (out.length > max) {
    const last = out[out.length - 1];
    out = out.filter((_, i) => i % 2 === 0);
    if (out[out.length - 1] !== last) out.push(last);
  }
  return out;
}

/** A state restored from a saved workflow, or a fresh one when the saved value is missing or malformed. */
export function restoreTrainState(saved) {
  if (!saved || typeof saved !== "object" || saved.version !== STATE_VERSION || !Array.isArray(saved.loss)) {
    return emptyTrainState();
  }
  return { ...emptyTrainState(), ...saved, val: { ...(saved.val || {}) }, last: { ...(saved.last || {}) } };
}

/**
 * Fold one event `detail` into `state`; returns a new state (the input is not modified).
 * A progress step that goes backwards, or progress after a finished run, starts a new run.
 */
export function applyTrainEvent(state, detail) {
  if (!detail || typeof detail !== "object") return state;
  const step = Number(detail.step);
  if (!Number.isFinite(step)) return state;
  let s = restoreTrainState(state);
  if (!detail.done && (s.done || step < s.step)) s = emptyTrainState();
  s = { ...s, loss: s.loss.slice(), val: Object.fromEntries(Object.entries(s.val).map(([k, v]) => [k, v.slice()])) };
  const total = Number(detail.total);
  if (Number.isFinite(total) && total > 0) s.total = total;
  s.step = Math.max(s.step, step);
  const metrics = detail.metrics && typeof detail.metrics === "object" ? detail.metrics : {};
  if (detail.done) {
    // The final event carries the best validated metrics, without the "val_" prefix.
    s.done = true;
    s.final = Object.fromEntries(Object.entries(metrics).filter(([, v]) => finite(v)));
    return s;
  }
  const last = { ...s.last };
  for (const [key, value] of Object.entries(metrics)) {
    if (!finite(value)) continue;
    last[key] = value;
    if (key === "loss") {
      const prev = s.loss[s.loss.length - 1];
      if (prev && prev[0] === step) s.loss[s.loss.length - 1] = [step, value];
      else s.loss.push([step, value]);
    } else if (key.startsWith("val_")) {
      const name = key.slice(4);
      const series = s.val[name] || (s.val[name] = []);
      if (!(series.length && series[series.length - 1][0] === step)) series.push([step, value]);
    }
  }
  s.last = last;
  s.loss = decimate(s.loss);
  for (const k of Object.keys(s.val)) s.val[k] = decimate(s.val[k]);
  return s;
}

/** Axis bounds with a little headroom, never empty. */
export function lossRange(points) {
  const ys = points.map((p) => p[1]).filter(finite);
  if (!ys.length) return [0, 1];
  let lo = Math.min(...ys);
  let hi = Math.max(...ys);
  if (hi - lo < 1e-9) {
    lo -= 0.5;
    hi += 0.5;
  }
  const pad = 0.05 * (hi - lo);
  return [Math.max(lo - pad, lo >= 0 ? 0 : -Infinity), hi + pad];
}

function fmt(v, digits = 3) {
  return finite(v) ? v.toFixed(digits) : "–";
}

function pct(v) {
  return finite(v) ? `${(100 * v).toFixed(1)}%` : "–";
}

/**
 * Everything the canvas needs: the plot box, one polyline per series in pixels, axis labels and legend.
 * `width`/`height` are CSS pixels of the canvas.
 */
export function chartLayout(state, width, height, { left = 42, right = 40, top = 8, bottom = 18 } = {}) {
  const s = restoreTrainState(state);
  const plot = { x: left, y: top, w: Math.max(1, width - left - right), h: Math.max(1, height - top - bottom) };
  const xMax = Math.max(1, s.total || 0, s.step || 0);
  const [lo, hi] = lossRange(s.loss);
  const px = (step) => plot.x + (plot.w * step) / xMax;
  const pyLoss = (v) => plot.y + plot.h * (1 - (v - lo) / (hi - lo));
  const pyVal = (v) => plot.y + plot.h * (1 - Math.min(1, Math.max(0, v)));
  const lines = [];
  if (s.loss.length) {
    lines.push({ key: "loss", label: "loss", color: LOSS_COLOR, axis: "left",
                 points: s.loss.map(([x, y]) => [px(x), pyLoss(y)]) });
  }
  for (const def of VAL_SERIES) {
    const pts = s.val[def.key];
    if (pts && pts.length) {
      lines.push({ key: def.key, label: def.label, color: def.color, axis: "right", dash: def.dash,
                   marker: def.marker, points: pts.map(([x, y]) => [px(x), pyVal(y)]) });
    }
  }
  return {
    plot, lines, xMax,
    leftTicks: [hi, (hi + lo) / 2, lo].map((v) => ({ y: pyLoss(v), text: fmt(v, 2) })),
    rightTicks: [1, 0.5, 0].map((v) => ({ y: pyVal(v), text: `${Math.round(100 * v)}%` })),
    // The end labels are aligned inwards so the last step never runs into the right axis' "0%".
    xTicks: [{ x: px(0), text: "0", align: "left" }, { x: px(xMax), text: String(xMax), align: "right" }],
  };
}

/** One or two short text lines under the chart: progress while training, best numbers when done. */
export function summaryLines(state) {
  const s = restoreTrainState(state);
  if (!s.step && !s.done) return ["Waiting for training: queue the workflow to see loss and recall here."];
  const head = [`step ${s.step}/${s.total || "?"}`];
  if (finite(s.last.loss)) head.push(`loss ${fmt(s.last.loss)}`);
  if (finite(s.last.lr)) head.push(`lr ${s.last.lr ? s.last.lr.toExponential(1) : 0}`);
  if (finite(s.last.logit_scale)) head.push(`scale ${fmt(s.last.logit_scale, 1)}`);
  if (s.done) head.push("done");
  const lines = [head.join(" · ")];
  const src = s.done && s.final ? s.final : Object.fromEntries(
    Object.entries(s.last).filter(([k]) => k.startsWith("val_")).map(([k, v]) => [k.slice(4), v]));
  const vals = VAL_SERIES.filter((d) => finite(src[d.key])).map((d) => `${d.label} ${pct(src[d.key])}`);
  if (vals.length) lines.push((s.done ? "best: " : "val: ") + vals.join(" · "));
  return lines;
}
