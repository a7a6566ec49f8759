// DOM view of the samplers' before/after comparison: two stacked images, the "before" one clipped left of a
// draggable divider (mouse, touch or arrow keys), plus previous/next buttons for batches.
import { beforeClipPath, clamp01, cycleIndex, fractionFromKey, fractionFromPointer } from "../lib/slider.js";

const IMG = "position:absolute;inset:0;width:100%;height:100%;object-fit:contain;pointer-events:none;user-select:none";

export function createCompareView(urlFor, doc = document) {
  const root = doc.createElement("div");
  root.className = "lit-compare";
  root.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;gap:3px;font:11px sans-serif;" +
    "color:#c9d1d9;box-sizing:border-box";
  const stage = doc.createElement("div");
  stage.className = "lit-compare-stage";
  stage.tabIndex = 0;
  stage.setAttribute("role", "slider");
  stage.setAttribute("aria-label", "before/after divider");
  stage.title = "Drag (or use the arrow keys) to compare: left of the line is the input, right is the result.";
  stage.style.cssText = "position:relative;flex:1 1 auto;min-height:0;background:#0d1117;border-radius:4px;" +
    "overflow:hidden;cursor:ew-resize;touch-action:none";
  const after = doc.createElement("img");
  after.className = "lit-compare-after";
  after.alt = "after";
  after.style.cssText = IMG;
  const before = doc.createElement("img");
  before.className = "lit-compare-before";
  before.alt = "before";
  before.style.cssText = IMG;
  const divider = doc.createElement("div");
  divider.className = "lit-compare-divider";
  divider.style.cssText = "position:absolute;top:0;bottom:0;width:2px;margin-left:-1px;background:#fff;" +
    "box-shadow:0 0 3px #000;pointer-events:none";
  const tagB = doc.createElement("span");
  tagB.textContent = "before";
  tagB.style.cssText = "position:absolute;left:4px;top:4px;background:#000a;padding:1px 4px;border-radius:3px";
  const tagA = doc.createElement("span");
  tagA.textContent = "after";
  tagA.style.cssText = "position:absolute;right:4px;top:4px;background:#000a;padding:1px 4px;border-radius:3px";
  stage.append(after, before, divider, tagB, tagA);
  const bar = doc.createElement("div");
  bar.className = "lit-compare-nav";
  bar.style.cssText = "display:flex;align-items:center;justify-content:center;gap:8px;flex:0 0 auto;height:18px";
  const prev = doc.createElement("button");
  prev.textContent = "◀";
  prev.title = "Previous image of the batch";
  const next = doc.createElement("button");
  next.textContent = "▶";
  next.title = "Next image of the batch";
  const counter = doc.createElement("span");
  counter.className = "lit-compare-counter";
  bar.append(prev, counter, next);
  const empty = doc.createElement("div");
  empty.className = "lit-compare-empty";
  empty.style.cssText = "color:#8b949e;padding:4px";
  empty.textContent = "Run the workflow to compare the input and the result here.";
  root.append(empty, stage, bar);

  let pairs = [];
  let index = 0;
  let fraction = 0.5;
  let dragging = false;

  function setFraction(f) {
    fraction = clamp01(f);
    before.style.clipPath = beforeClipPath(fraction);
    divider.style.left = `${(100 * fraction).toFixed(3)}%`;
    stage.setAttribute("aria-valuenow", String(Math.round(100 * fraction)));
    root.dataset.fraction = fraction.toFixed(4);
  }

  function show() {
    const has = pairs.length > 0;
    empty.style.display = has ? "none" : "";
    stage.style.display = has ? "" : "none";
    bar.style.display = pairs.length > 1 ? "" : "none";
    root.dataset.count = String(pairs.length);
    root.dataset.index = String(index);
    if (!has) return;
    const p = pairs[index];
    after.src = urlFor(p.after);
    before.src = urlFor(p.before);
    counter.textContent = `${index + 1} / ${pairs.length}`;
  }

  const fromEvent = (e) => {
    const r = stage.getBoundingClientRect();
    setFraction(fractionFromPointer(e.clientX, r.left, r.width));
  };
  stage.addEventListener("pointerdown", (e) => {
    dragging = true;
    stage.setPointerCapture?.(e.pointerId);
    fromEvent(e);
    e.stopPropagation();
  });
  stage.addEventListener("pointermove", (e) => dragging && fromEvent(e));
  const stop = () => (dragging = false);
  stage.addEventListener("pointerup", stop);
  stage.addEventListener("pointercancel", stop);
  stage.addEventListener("keydown", (e) => {
    const f = fractionFromKey(fraction, e.key);
    if (f === null) return;
    setFraction(f);
    e.preventDefault();
    e.stopPropagation();
  });
  prev.addEventListener("click", () => {
    index = cycleIndex(index, -1, pairs.length);
    show();
  });
  next.addEventListener("click", () => {
    index = cycleIndex(index, 1, pairs.length);
    show();
  });

  setFraction(0.5);
  show();
  return {
    element: root,
    minHeight: () => (pairs.length ? 220 : 40),
    setFraction,
    render(list) {
      pairs = Array.isArray(list) ? list : [];
      index = Math.min(index, Math.max(0, pairs.length - 1));
      show();
    },
  };
}
