// Pure maths for the before/after comparison slider of the Enhancement and Restoration samplers. No DOM.

export const KEY_STEP = 0.05;

export function clamp01(v) {
  return Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 0.5;
}

/** Slider position (0 = all "after", 1 = all "before") from a pointer x and the element's box. */
export function fractionFromPointer(clientX, boxLeft, boxWidth) {
  if (!(boxWidth > 0)) return 0.5;
  return clamp01((clientX - boxLeft) / boxWidth);
}

/** New position for a key press, or null when the key does not move the slider. */
export function fractionFromKey(fraction, key, step = KEY_STEP) {
  switch (key) {
    case "ArrowLeft":
    case "ArrowDown":
      return clamp01(fraction - step);
    case "ArrowRight":
    case "ArrowUp":
      return clamp01(fraction + step);
    case "Home":
      return 0;
    case "End":
      return 1;
    default:
      return null;
  }
}

/** CSS clip-path that shows the "before" image left of the divider only. */
export function beforeClipPath(fraction) {
  return `inset(0 ${(100 * (1 - clamp01(fraction))).toFixed(3)}% 0 0)`;
}

/** The box an image of `imgW`×`imgH` occupies when fitted ("contain") and centred in `boxW`×`boxH`. */
export function containRect(imgW, imgH, boxW, boxH) {
  if (!(imgW > 0 && imgH > 0 && boxW > 0 && boxH > 0)) {
    return { x: 0, y: 0, w: Math.max(0, boxW), h: Math.max(0, boxH) };
  }
  const scale = Math.min(boxW / imgW, boxH / imgH);
  const w = imgW * scale;
  const h = imgH * scale;
  return { x: (boxW - w) / 2, y: (boxH - h) / 2, w, h };
}

function validRef(ref) {
  return ref && typeof ref === "object" && typeof ref.filename === "string" && ref.filename.length > 0;
}

/** The `/view` query for a ComfyUI image record `{filename, subfolder, type}`. */
export function viewPath(ref) {
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "temp" });
  return `/view?${q.toString()}`;
}

/** The valid `{before, after}` pairs of a `lit_compare` ui list (malformed entries are dropped). */
export function comparePairs(list) {
  return (Array.isArray(list) ? list : []).filter((p) => p && validRef(p.before) && validRef(p.after))
    .map((p) => ({ before: { ...p.before }, after: { ...p.after } }));
}

/** Index after moving by `delta` through `count` pairs (wraps around). */
export function cycleIndex(index, delta, count) {
  if (!(count > 0)) return 0;
  return (((index + delta) % count) + count) % count;
}
