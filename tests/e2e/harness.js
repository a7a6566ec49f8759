// Mounts the real extension (/extensions/ComfyUI-LiT/js/lit_extension.js) on fake LiteGraph nodes, replays recorded
// events / ui payloads, and writes what it sees (DOM facts, canvas pixel counts) as JSON into #result.
import { app } from "/scripts/app.js";
import { api } from "/scripts/api.js";

const out = { errors: [] };
window.addEventListener("error", (e) => out.errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => out.errors.push(String(e.reason)));

const NODE_DEFS = [
  { name: "LiTLockedTuning", category: "LiT" },
  { name: "LiTZeroShotClassify", category: "LiT" },
  { name: "LiTScore", category: "LiT" },
  { name: "LiTEnhancementSampler", category: "LiT/enhance" },
  { name: "LiTRestorationSampler", category: "LiT/restore" },
  { name: "LiTDataset", category: "LiT" },
  { name: "KSampler", category: "sampling" },
];

class FakeNode {
  constructor() {
    this.properties = {};
    this.widgets = [];
    this.badges = [];
    this.size = [380, 80];
    this.box = document.createElement("div");
    this.box.className = "fake-node";
    this.box.style.cssText = "background:#353535;padding:4px;box-sizing:border-box;width:380px";
    document.getElementById("stage").append(this.box);
  }
  addDOMWidget(name, type, element, options) {
    const holder = document.createElement("div");
    holder.className = "dom-widget";
    holder.style.cssText = `width:100%;height:${options.getMinHeight()}px`;
    holder.append(element);
    this.box.append(holder);
    const widget = { name, type, element, options, holder };
    this.widgets.push(widget);
    return widget;
  }
  computeSize() {
    return [380, 30 + this.widgets.reduce((h, w) => h + w.options.getMinHeight(), 0)];
  }
  setSize(size) {
    this.size = size;
    for (const w of this.widgets) w.holder.style.height = `${w.options.getMinHeight()}px`;
  }
  setDirtyCanvas() {}
}

async function makeNode(ext, def, id) {
  const cls = class extends FakeNode {};
  await ext.beforeRegisterNodeDef(cls, def, app);
  const node = new cls();
  node.id = id;
  node.type = def.name;
  node.box.dataset.type = def.name;
  node.onNodeCreated?.();
  app.graph.add(node);
  return node;
}

// Timers, not requestAnimationFrame: under --virtual-time-budget timers advance deterministically.
const frame = () => new Promise((r) => setTimeout(r, 50));

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function countColor(canvas, hex, tol = 40) {
  const ctx = canvas.getContext("2d");
  const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const [r, g, b] = hexToRgb(hex);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 128 && Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < tol) n++;
  }
  return n;
}

function chartFacts(node) {
  const root = node.box.querySelector(".lit-train-chart");
  const canvas = root.querySelector("canvas");
  return {
    step: root.dataset.step, done: root.dataset.done,
    summary: root.querySelector(".lit-train-summary").textContent,
    legend: [...root.querySelectorAll(".lit-legend-item")].map((e) => e.dataset.key),
    canvasSize: [canvas.width, canvas.height],
    lossPixels: countColor(canvas, "#79c0ff"),
    recallPixels: countColor(canvas, "#7ee787"),
  };
}

// Layout and the ResizeObserver redraw settle asynchronously (a resize clears the canvas until the next draw), so
// read the chart once two consecutive frames agree.
async function settledChartFacts(node) {
  let prev = chartFacts(node);
  for (let i = 0; i < 20; i++) {
    await frame();
    const cur = chartFacts(node);
    if (cur.lossPixels === prev.lossPixels && cur.canvasSize.join() === prev.canvasSize.join()) return cur;
    prev = cur;
  }
  return prev;
}

function barFacts(node) {
  const root = node.box.querySelector(".lit-bars");
  return {
    kind: root.dataset.kind,
    images: root.querySelectorAll(".lit-bars-image").length,
    rows: root.querySelectorAll(".lit-bar-row").length,
    best: [...root.querySelectorAll(".lit-bar-row.lit-best .lit-bar-label")].map((e) => e.textContent),
    values: [...root.querySelectorAll(".lit-bar-row")].slice(0, 4)
      .map((e) => e.querySelector(".lit-bar-value").textContent),
    fillWidthsPx: [...root.querySelectorAll(".lit-bar-fill")].slice(0, 4).map((e) => e.getBoundingClientRect().width),
    trackWidthPx: root.querySelector(".lit-bar-track")?.getBoundingClientRect().width ?? 0,
    more: root.querySelector(".lit-bars-more")?.textContent ?? "",
    scrollable: root.scrollHeight > root.clientHeight,
    empty: !!root.querySelector(".lit-bars-empty"),
  };
}

function waitImages(root) {
  return Promise.all([...root.querySelectorAll("img")].map((img) => (img.complete ? Promise.resolve()
    : new Promise((r) => { img.onload = r; img.onerror = r; }))));
}

async function compareFacts(node) {
  const root = node.box.querySelector(".lit-compare");
  await waitImages(root);
  const stage = root.querySelector(".lit-compare-stage");
  const before = root.querySelector(".lit-compare-before");
  const after = root.querySelector(".lit-compare-after");
  const facts = {
    count: root.dataset.count, index: root.dataset.index,
    stageVisible: stage.getBoundingClientRect().height > 0,
    beforeSrc: before.getAttribute("src"), afterSrc: after.getAttribute("src"),
    beforeLoaded: before.naturalWidth, afterLoaded: after.naturalWidth,
    initial: root.dataset.fraction, initialClip: before.style.clipPath,
  };
  const r = stage.getBoundingClientRect();
  const opts = (x) => ({ bubbles: true, clientX: r.left + x * r.width, clientY: r.top + r.height / 2, pointerId: 1 });
  stage.dispatchEvent(new PointerEvent("pointerdown", opts(0.2)));
  stage.dispatchEvent(new PointerEvent("pointermove", opts(0.25)));
  stage.dispatchEvent(new PointerEvent("pointerup", opts(0.25)));
  stage.dispatchEvent(new PointerEvent("pointermove", opts(0.9))); // not dragging: ignored
  facts.afterDrag = root.dataset.fraction;
  facts.dragClip = before.style.clipPath;
  facts.dividerLeft = root.querySelector(".lit-compare-divider").style.left;
  stage.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
  facts.afterKey = root.dataset.fraction;
  root.querySelector(".lit-compare-nav button:last-child").click();
  await waitImages(root);
  facts.afterNext = { index: root.dataset.index, counter: root.querySelector(".lit-compare-counter").textContent,
                      beforeSrc: before.getAttribute("src"), beforeLoaded: before.naturalWidth };
  return facts;
}

async function main() {
  await import("/extensions/ComfyUI-LiT/js/lit_extension.js");
  const ext = app.extensions.find((e) => e.name === "comfyui_lit.frontend");
  out.registered = app.extensions.map((e) => e.name);
  await ext.setup(app);
  const nodes = {};
  let id = 1;
  for (const def of NODE_DEFS) nodes[def.name] = await makeNode(ext, def, id++);
  out.style = Object.fromEntries(Object.entries(nodes).map(([k, n]) => [k, {
    bgcolor: n.bgcolor ?? null, badges: n.badges.map((b) => b().text), widgets: n.widgets.map((w) => w.name),
    serialize: n.widgets.map((w) => w.options.serialize),
  }]));
  await frame();
  out.trainEmpty = chartFacts(nodes.LiTLockedTuning);
  console.log("stage: empty");

  const fx = await (await fetch("/e2e/fixtures/recorded.json")).json();
  console.log("stage: fetched");
  const trainId = String(nodes.LiTLockedTuning.id);
  const half = Math.floor(fx.train_events.length / 2);
  const send = (d) => api.dispatchEvent(new CustomEvent("comfyui_lit.train", { detail: { ...d, node: trainId } }));
  fx.train_events.slice(0, half).forEach(send);
  await frame();
  out.trainMid = await settledChartFacts(nodes.LiTLockedTuning);
  console.log("stage: mid");
  fx.train_events.slice(half).forEach(send);
  nodes.LiTLockedTuning.onExecuted({ text: [fx.train_report] });
  await frame();
  out.trainDone = await settledChartFacts(nodes.LiTLockedTuning);
  out.trainSaved = JSON.parse(JSON.stringify(nodes.LiTLockedTuning.properties)).lit_train?.loss?.length ?? 0;
  // An event for a node id that does not exist must not land anywhere else when it is ambiguous... here it is the
  // only training node, so it is routed to it (subgraph fallback).

  // Page reload: a fresh node gets the saved properties, then LiteGraph calls onConfigure.
  const reloaded = await makeNode(ext, NODE_DEFS[0], 100);
  reloaded.properties = JSON.parse(JSON.stringify(nodes.LiTLockedTuning.properties));
  reloaded.onConfigure?.({});
  // Same box as the original, as after a real reload (LiteGraph restores the node's size), so the two canvases
  // can be compared pixel for pixel.
  reloaded.widgets.forEach((w, i) => { w.holder.style.height = nodes.LiTLockedTuning.widgets[i].holder.style.height; });
  // Text wrapping in the legend/summary can still shift the flexible canvas by a line; pin both canvases to one
  // size so the drawings compare pixel for pixel.
  for (const n of [nodes.LiTLockedTuning, reloaded]) {
    const c = n.box.querySelector(".lit-train-chart canvas");
    c.style.flex = "none";
    c.style.height = "150px";
    c.getBoundingClientRect();  // force layout now
    // ResizeObserver callbacks are not reliably delivered under --virtual-time-budget: redraw explicitly, from the
    // state each node holds (the original's live state, the reloaded one's restored from its properties).
    n.litView.render(n.properties.lit_train);
  }
  out.trainDonePinned = await settledChartFacts(nodes.LiTLockedTuning);
  out.trainReloaded = await settledChartFacts(reloaded);

  nodes.LiTZeroShotClassify.onExecuted(fx.classify_ui);
  nodes.LiTScore.onExecuted(fx.score_ui);
  await frame();
  console.log("stage: bars");
  out.classify = barFacts(nodes.LiTZeroShotClassify);
  out.score = barFacts(nodes.LiTScore);
  // A big batch: only the first images get bars, the list scrolls, the rest is counted.
  const big = await makeNode(ext, NODE_DEFS[1], 101);
  const one = fx.classify_ui.lit_probs[0];
  big.onExecuted({ lit_probs: [{ labels: one.labels, images: Array.from({ length: 20 }, () => one.images[0]) }] });
  await frame();
  out.classifyBig = barFacts(big);
  out.classifySaved = JSON.parse(JSON.stringify(big.properties)).lit_bars?.kind ?? null;
  // 16 images x 10k prompts (issue 14): drawing must not overflow the stack, the saved copy must stay small,
  // and a reload from it (and from a payload this version cannot draw) must not throw.
  const huge = await makeNode(ext, NODE_DEFS[2], 102);
  const prompts = Array.from({ length: 10000 }, (_, i) => `prompt ${i}`);
  const scores = Array.from({ length: 16 }, (_, r) => prompts.map((_, i) => Math.sin(i * 12.9898 + r * 78.233)));
  try {
    huge.onExecuted({ lit_scores: [{ prompts, scores }] });
    await frame();
    const saved = JSON.stringify(huge.properties);
    const again = await makeNode(ext, NODE_DEFS[2], 103);
    again.properties = JSON.parse(saved);
    again.onConfigure?.({});
    await frame();
    const broken = await makeNode(ext, NODE_DEFS[2], 104);
    broken.properties = { lit_bars: { kind: "scores", data: { prompts: 5, scores: { length: 1e9 } } } };
    broken.onConfigure?.({});
    out.scoresHuge = { rows: huge.box.querySelectorAll(".lit-bar-row").length, savedChars: saved.length,
                       reloadedRows: again.box.querySelectorAll(".lit-bar-row").length, brokenOk: true };
  } catch (e) {
    out.scoresHuge = { error: String(e && e.stack || e) };
  }

  nodes.LiTRestorationSampler.onExecuted(fx.compare_ui);
  out.compareEmpty = nodes.LiTEnhancementSampler.box.querySelector(".lit-compare").dataset.count;
  await frame();
  console.log("stage: compare");
  out.compare = await compareFacts(nodes.LiTRestorationSampler);
  await frame();
}

main().catch((e) => out.errors.push(String(e && e.stack || e))).finally(() => {
  document.getElementById("result").textContent = JSON.stringify(out);
  document.title = "done";
});
