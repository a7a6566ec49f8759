// Pure logic for the Zero-Shot Classify / Score bar charts: turn the nodes' `lit_probs` / `lit_scores` ui
// payloads into rows of bars (label, value text, bar start and width as fractions of the track). No DOM.

export const DEFAULT_MAX_IMAGES = 16;
export const DEFAULT_TOP_K = 5;

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
  return { kind: "probs", images: shown, hidden: Math.max(0, images.length - shown.length), total: images.length };
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
export function scoreRows(payload, { maxImages = DEFAULT_MAX_IMAGES } = {}) {
  const data = firstPayload(payload);
  const prompts = Array.isArray(data?.prompts) ? data.prompts.map(String) : [];
  const scores = Array.isArray(data?.scores) ? data.scores : [];
  const visible = scores.slice(0, Math.max(0, maxImages));
  const all = visible.flat().filter(finite);
  const lo = Math.min(0, ...all);
  const hi = Math.max(0, ...all, lo + 1e-6);
  const images = visible.map((row, index) => {
    const vals = (Array.isArray(row) ? row : []).map((v) => (finite(v) ? v : NaN));
    const bestIdx = vals.reduce((b, v, i) => (finite(v) && (b < 0 || v > vals[b]) ? i : b), -1);
    const rows = vals.map((v, i) => ({
      label: prompts[i] ?? `prompt ${i}`, value: v, text: finite(v) ? (v >= 0 ? "+" : "") + v.toFixed(3) : "–",
      ...(finite(v) ? signedBar(v, lo, hi) : { start: 0, width: 0, zero: signedBar(0, lo, hi).zero }),
      best: i === bestIdx,
    }));
    return { index, title: `image ${index}`, rows };
  });
  return { kind: "scores", images, hidden: Math.max(0, scores.length - images.length), total: scores.length,
           range: [lo, hi] };
}
