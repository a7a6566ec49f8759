// ComfyUI-LiT front-end: category colours and badges for the pack's nodes, a live training chart inside
// "LiT Locked Tuning", per-image bar charts inside "LiT Zero-Shot Classify" / "LiT Score", and a before/after
// slider inside the Enhancement / Restoration samplers.
// Loaded by ComfyUI from WEB_DIRECTORY as an ES module; `app`/`api` are the host's, three folders up from
// /extensions/<pack>/js/. All logic worth testing lives in ./lib (pure) and ./widgets (DOM only).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { categoryStyle, nodeIdCandidates, widgetKindFor } from "./lib/appearance.js";
import { compactPayload, probabilityRows, scoreRows } from "./lib/bars.js";
import { comparePairs, viewPath } from "./lib/slider.js";
import { TRAIN_EVENT, applyTrainEvent, restoreTrainState } from "./lib/train_chart.js";
import { createBarsView } from "./widgets/bars_view.js";
import { createCompareView } from "./widgets/compare_view.js";
import { createTrainChartView } from "./widgets/train_chart_view.js";

// Saved on the node (node.properties travel with the workflow), so results survive a page reload.
const PROP = { train_chart: "lit_train", bars: "lit_bars", compare: "lit_compare", saved: "lit_saved" };
const WIDGET_NAME = "lit_view";
const REPORT_CHARS = 4000;

function titleBadge(text, bgColor) {
  // Duck-typed LGraphBadge (LiteGraph calls a function entry and uses its height/getWidth/draw).
  const badge = {
    text, height: 18, visible: true, xOffset: 0, yOffset: 0,
    getWidth(ctx) {
      ctx.save();
      ctx.font = "11px sans-serif";
      const w = ctx.measureText(text).width + 12;
      ctx.restore();
      return w;
    },
    draw(ctx, x, y) {
      const w = this.getWidth(ctx);
      ctx.save();
      ctx.fillStyle = bgColor;
      ctx.beginPath();
      if (ctx.roundRect) ctx.roundRect(x, y, w, this.height, 5);
      else ctx.rect(x, y, w, this.height);
      ctx.fill();
      ctx.fillStyle = "#ffffff";
      ctx.font = "11px sans-serif";
      ctx.textBaseline = "middle";
      ctx.textAlign = "left";
      ctx.fillText(text, x + 6, y + this.height / 2 + 1);
      ctx.restore();
    },
  };
  return () => badge;
}

let lastPersist = 0;
const PERSIST_EVERY_MS = 5000;

function persistWorkflow({ force = true } = {}) {
  // Let the host notice the changed node.properties now (it saves the open workflow for reloads). Throttled
  // during training: serialising the graph on every event would be wasteful.
  const now = Date.now();
  if (!force && now - lastPersist < PERSIST_EVERY_MS) return;
  lastPersist = now;
  try {
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
  } catch {
    // Saving is best effort; the next user interaction saves anyway.
  }
}

function fitNode(node) {
  const size = node.computeSize?.();
  if (size && node.size) node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas?.(true, true);
}

function imageUrl(ref) {
  const path = viewPath(ref);
  return typeof api.apiURL === "function" ? api.apiURL(path) : path;
}

export function renderFromProperties(node) {
  const view = node.litView;
  if (!view) return;
  const saved = node.properties?.[PROP[node.litKind]];
  try {
    if (node.litKind === "train_chart") view.render(restoreTrainState(saved));
    else if (node.litKind === "bars") view.render(renderBars(saved));
    else if (node.litKind === "compare") view.render(comparePairs(saved));
    else if (node.litKind === "saved") view.render(typeof saved === "string" ? saved : "");
  } catch (err) {
    // A saved result this version cannot draw must never break loading the workflow: drop it and say so.
    console.warn("[ComfyUI-LiT] could not redraw the saved result; it is cleared (run the node again).", err);
    if (node.properties) delete node.properties[PROP[node.litKind]];
    try {
      const empty = { compare: [], bars: { images: [] }, saved: "" }[node.litKind];
      view.render(empty === undefined ? restoreTrainState(null) : empty);
    } catch { /* the view stays empty */ }
  }
}

export function renderBars(saved) {
  if (!saved) return { images: [] };
  return saved.kind === "scores" ? scoreRows(saved.data) : probabilityRows(saved.data);
}

/** Save Adapter: the path it wrote, so a second run's name (or an overwrite) is visible in the node. */
function createSavedView(doc = document) {
  const root = doc.createElement("div");
  root.className = "lit-saved";
  root.style.cssText = "font:11px sans-serif;color:#c9d1d9;background:#0d1117;border-radius:4px;padding:4px 6px;" +
    "word-break:break-all;box-sizing:border-box;width:100%";
  return {
    element: root,
    minHeight: () => 44,
    // The node's own line ("saved <path>", plus a note when a new name had to be used), shown as is.
    render(line) {
      root.textContent = line || "Run the workflow: the saved adapter's path shows here.";
      root.dataset.path = line || "";
    },
  };
}

function attachView(node, kind) {
  const view = kind === "train_chart" ? createTrainChartView()
    : kind === "bars" ? createBarsView()
    : kind === "saved" ? createSavedView()
    : createCompareView(imageUrl);
  node.litKind = kind;
  node.litView = view;
  node.properties ??= {};
  if (typeof node.addDOMWidget === "function") {
    const widget = node.addDOMWidget(WIDGET_NAME, "lit_view", view.element, {
      serialize: false, // not a node input: never sent to the server
      hideOnZoom: false,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => view.minHeight(),
    });
    widget.serialize = false; // and not part of widgets_values in the saved workflow
  }
  renderFromProperties(node);
  fitNode(node);
}

function findNodeForEvent(detail) {
  const graph = app.graph;
  for (const id of nodeIdCandidates(detail?.node)) {
    const node = graph?.getNodeById?.(id);
    if (node?.litKind === "train_chart") return node;
  }
  // Inside a subgraph the id is a path the root graph does not know; one training node is unambiguous.
  const candidates = (graph?._nodes ?? graph?.nodes ?? []).filter((n) => n?.litKind === "train_chart");
  return candidates.length === 1 ? candidates[0] : null;
}

export function onTrainEvent(detail) {
  const node = findNodeForEvent(detail);
  if (!node) return;
  const state = applyTrainEvent(node.properties?.[PROP.train_chart], detail);
  node.properties ??= {};
  node.properties[PROP.train_chart] = state;
  node.litView?.render(state);
  node.setDirtyCanvas?.(true, false);
  persistWorkflow({ force: !!detail?.done });
}

function onExecutedFor(node, message) {
  if (!message) return;
  if (node.litKind === "train_chart" && Array.isArray(message.text) && message.text.length) {
    const state = { ...restoreTrainState(node.properties[PROP.train_chart]) };
    state.report = String(message.text[0]).slice(0, REPORT_CHARS);
    node.properties[PROP.train_chart] = state;
    node.litView.render(state);
  } else if (node.litKind === "bars") {
    const kind = message.lit_probs ? "probs" : message.lit_scores ? "scores" : null;
    if (!kind) return;
    const full = { kind, data: (kind === "probs" ? message.lit_probs : message.lit_scores)[0] };
    node.litView.render(renderBars(full));
    // Saved with the workflow: only what is drawn, so a huge result stays small and redraws cheaply on reload.
    node.properties[PROP.bars] = { kind, data: compactPayload(kind, full.data) };
  } else if (node.litKind === "saved" && Array.isArray(message.text) && message.text.length) {
    node.properties[PROP.saved] = String(message.text[0]);
    node.litView.render(node.properties[PROP.saved]);
  } else if (node.litKind === "compare") {
    const pairs = comparePairs(message.lit_compare);
    if (!pairs.length) return;
    node.properties[PROP.compare] = pairs;
    node.litView.render(pairs);
  } else {
    return;
  }
  fitNode(node);
  persistWorkflow();
}

export const extension = {
  name: "comfyui_lit.frontend",
  async setup() {
    api.addEventListener(TRAIN_EVENT, (event) => onTrainEvent(event?.detail));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const style = categoryStyle(nodeData?.category);
    if (!style) return;
    const kind = widgetKindFor(nodeData?.name);
    const proto = nodeType.prototype;

    const onNodeCreated = proto.onNodeCreated;
    proto.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = style.color;
      this.bgcolor = style.bgcolor;
      if (style.badge && Array.isArray(this.badges)) this.badges.push(titleBadge(style.badge, style.badgeColor));
      if (kind) attachView(this, kind);
      return result;
    };
    if (!kind) return;

    const onConfigure = proto.onConfigure;
    proto.onConfigure = function () {
      const result = onConfigure?.apply(this, arguments);
      renderFromProperties(this);
      return result;
    };
    const onExecuted = proto.onExecuted;
    proto.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      onExecutedFor(this, message);
      return result;
    };
  },
};

app.registerExtension(extension);
