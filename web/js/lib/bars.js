// Pure logic for the Zero-Shot Classify / Score bar charts: turn the nodes' `lit_probs` / `lit_scores` ui
// payloads into rows of bars (label, value text, bar start and width as fractions of the track). No DOM.

export const DEFAULT_MAX_IMAGES = 16;
export const DEFAULT_TOP_K = 5;
// Score bars per image: beyond this many prompts only the best ones are drawn (and counted as hidden), so 10k
// prompts cost 16 x 20 DOM rows, not 160k.
export const DEFAULT_MAX_PROMPTS = 20;

function finite(v) {
  return typeof v === "number" && Number.isFinite(v);
}

/** The first element of a ui list (ComfyUI merges ui dicts into lists), or the value itself. */
export function firstPayload(value) {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * Bars for `{"labels", "images": [[{label, p}, ...] per image]}` from LiT Zero-Shot Classify.
 * Each image shows its `topK` most likely labels; `hidden` counts images beyond `maxImages`.
 */
export function probabilityRows(payload, { maxImages = DEFAULT_MAX_IMAGES, topK = DEFAULT_TOP_K } = {}) {
  const data = firstPayload(payload);
  const images = Array.isArray(data?.images) ? data.images : [];
  const shown = images.slice(0, Math.max(0, maxImages)).map((ranked, index) => {
    const rows = (Array.isArray(ranked) ? ranked : [])
      .filter((r) => r && finite(r.p))
      .slice()
      .sort((a, b) => b.p - a.p)
      .slice(0, Math.max(1, topK))
      .map((r, rank) => {
        const p = Math.min(1, Math.max(0, r.p));
        return { label: String(r.label), value: p, text: `${(100 * p).toFixed(1)}%`, start: 0, width: p,
                 best: rank === 0 };
      });
    return { index, title: `image ${index}`, rows };
  });
  const total = Math.max(images.length, Number.isInteger(data?.total_images) ? data.total_images : 0);
  return { kind: "probs", images: shown, hidden: Math.max(0, total - shown.length), total };
}

/**
 * Where a signed value's bar sits on a track spanning [lo, hi] that always includes 0:
 * bars grow from the zero line to the value, so negative cosines point left.
 */
export function signedBar(value, lo, hi) {
  const span = hi - lo || 1;
  const zero = (0 - lo) / span;
  const pos = (value - lo) / span;
  return { start: Math.min(zero, pos), width: Math.abs(pos - zero), zero };
}

/**
 * Bars for `{"prompts", "scores": [[cosine per prompt] per image]}` from LiT Score. One shared scale for all
 * shown images so bars compare across images; the best prompt of each image is flagged.
 */
export function scoreRows(payload, { maxImages = DEFAULT_MAX_IMAGES, maxPrompts = DEFAULT_MAX_PROMPTS } = {}) {
  const data = firstPayload(payload);
  const prompts = Array.isArray(data?.prompts) ? data.prompts.map(String) : [];
  const scores = Array.isArray(data?.scores) ? data.scores : [];
  const visible = scores.slice(0, Math.max(0, maxImages));
  // A loop, not Math.min(...all): spreading ~120k values into one call overflows the call stack.
  let lo = 0;
  let hi = 0;
  for (const row of visible) {
    if (!Array.isArray(row)) continue;
    for (const v of row) {
      if (!finite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  // A compacted payload (saved with the node) keeps the full result's range, so a reload draws the same bars.
  if (Array.isArray(data?.range) && data.range.length === 2 && data.range.every(finite)) {
    lo = Math.min(lo, data.range[0]);
    hi = Math.max(hi, data.range[1]);
  }
  hi = Math.max(hi, lo + 1e-6);
  const limit = Math.max(1, maxPrompts);
  const images = visible.map((row, index) => {
    const vals = (Array.isArray(row) ? row : []).map((v) => (finite(v) ? v : NaN));
    let bestIdx = -1;
    for (let i = 0; i < vals.length; i++) if (finite(vals[i]) && (bestIdx < 0 || vals[i] > vals[bestIdx])) bestIdx = i;
    let order = vals.map((_, i) => i);
    if (order.length > limit) {
      // Too many to draw: keep the best-scoring prompts, in their original order.
      order = order.filter((i) => finite(vals[i])).sort((a, b) => vals[b] - vals[a]).slice(0, limit)
        .sort((a, b) => a - b);
    }
    const rows = order.map((i) => {
      const v = vals[i];
      return {
        label: prompts[i] ?? `prompt ${i}`, value: v, text: finite(v) ? (v >= 0 ? "+" : "") + v.toFixed(3) : "–",
        ...(finite(v) ? signedBar(v, lo, hi) : { start: 0, width: 0, zero: signedBar(0, lo, hi).zero }),
        best: i === bestIdx,
      };
    });
    const totalPrompts = Math.max(vals.length, Number.isInteger(data?.total_prompts) ? data.total_prompts : 0);
    return { index, title: `image ${index}`, rows, hiddenRows: totalPrompts - rows.length };
  });
  const total = Math.max(scores.length, Number.isInteger(data?.total_images) ? data.total_images : 0);
  return { kind: "scores", images, hidden: Math.max(0, total - images.length), total, range: [lo, hi] };
}

/**
 * What is saved with the node for a reload: only what the bars can show (the first images, their best prompts),
 * so a huge result neither bloats the workflow file nor costs a full redraw on every load.
 */
export function compactPayload(kind, data, { maxImages = DEFAULT_MAX_IMAGES, maxPrompts = DEFAULT_MAX_PROMPTS,
                                             topK = DEFAULT_TOP_K } = {}) {
  const d = firstPayload(data);
  if (!d || typeof d !== "object") return null;
  if (kind === "scores") {
    const lay = scoreRows(d, { maxImages, maxPrompts });
    const scores = Array.isArray(d.scores) ? d.scores : [];
    const keep = new Set();
    for (const img of lay.images) for (const r of img.rows) keep.add(r.label);
    const prompts = Array.isArray(d.prompts) ? d.prompts.map(String) : [];
    const idx = prompts.length > maxPrompts ? prompts.map((p, i) => (keep.has(p) ? i : -1)).filter((i) => i >= 0)
      : prompts.map((_, i) => i);
    return { prompts: idx.map((i) => prompts[i]),
             scores: scores.slice(0, maxImages).map((row) => (Array.isArray(row) ? idx.map((i) => row[i]) : [])),
             total_images: scores.length, total_prompts: prompts.length, range: lay.range };
  }
  const images = Array.isArray(d.images) ? d.images : [];
  const lay = probabilityRows(d, { maxImages, topK });
  return { labels: Array.isArray(d.labels) ? d.labels.slice(0, 1000) : [],
           images: lay.images.map((img) => img.rows.map((r) => ({ label: r.label, p: r.value }))),
           total_images: images.length };
}
