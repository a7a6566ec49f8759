// DOM view of the Locked Tuning chart: a canvas (loss on the left axis, validation recall on the right) and a
// summary line. Layout maths lives in ../lib/train_chart.js; this file only draws.
import { chartLayout, summaryLines, restoreTrainState } from "../lib/train_chart.js";

const STYLE = {
  root: "display:flex;flex-direction:column;width:100%;height:100%;box-sizing:border-box;gap:4px;" +
        "font:11px sans-serif;color:#c9d1d9;overflow:hidden",
  canvas: "flex:1 1 auto;min-height:0;width:100%;background:#0d1117;border-radius:4px",
  legend: "display:flex;flex-wrap:wrap;gap:2px 10px;flex:0 0 auto",
  summary: "white-space:pre-wrap;flex:0 0 auto;color:#e6edf3",
  report: "flex:0 0 auto;color:#8b949e",
  reportText: "white-space:pre-wrap;margin:2px 0 0;max-height:110px;overflow:auto;font:10px monospace;" +
              "color:#c9d1d9;background:#0d1117;border-radius:4px;padding:3px 5px",
};

export function createTrainChartView(doc = document) {
  const root = doc.createElement("div");
  root.className = "lit-train-chart";
  root.style.cssText = STYLE.root;
  root.title = "Training loss (left axis) and validation recall / zero-shot accuracy (right axis, %).";
  const canvas = doc.createElement("canvas");
  canvas.className = "lit-train-canvas";
  canvas.style.cssText = STYLE.canvas;
  const legend = doc.createElement("div");
  legend.className = "lit-train-legend";
  legend.style.cssText = STYLE.legend;
  const summary = doc.createElement("div");
  summary.className = "lit-train-summary";
  summary.style.cssText = STYLE.summary;
  // The node's full report, kept with the workflow: ComfyUI's own Preview Any shows it only until a reload.
  const report = doc.createElement("details");
  report.className = "lit-train-report";
  report.style.cssText = STYLE.report;
  const reportTitle = doc.createElement("summary");
  reportTitle.textContent = "Report";
  const reportText = doc.createElement("pre");
  reportText.style.cssText = STYLE.reportText;
  report.append(reportTitle, reportText);
  root.append(canvas, legend, summary, report);

  let state = restoreTrainState(null);

  function draw() {
    const cssW = Math.max(60, Math.round(canvas.clientWidth || 320));
    const cssH = Math.max(40, Math.round(canvas.clientHeight || 140));
    const dpr = (doc.defaultView && doc.defaultView.devicePixelRatio) || 1;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const lay = chartLayout(state, cssW, cssH);
    const { plot } = lay;
    ctx.strokeStyle = "#30363d";
    ctx.lineWidth = 1;
    ctx.strokeRect(plot.x + 0.5, plot.y + 0.5, plot.w, plot.h);
    ctx.fillStyle = "#8b949e";
    ctx.font = "10px sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    if (lay.lines.some((l) => l.axis === "left")) for (const t of lay.leftTicks) ctx.fillText(t.text, plot.x - 4, t.y);
    ctx.textAlign = "left";
    if (lay.lines.some((l) => l.axis === "right")) {
      for (const t of lay.rightTicks) ctx.fillText(t.text, plot.x + plot.w + 4, t.y);
    }
    ctx.textBaseline = "top";
    for (const t of lay.xTicks) {
      ctx.textAlign = t.align || "center";
      ctx.fillText(t.text, t.x, plot.y + plot.h + 3);
    }
    // Last drawn is on top: loss first, then validation series from least to most important (R@1 on top).
    const left = lay.lines.filter((l) => l.axis === "left");
    const order = [...left, ...lay.lines.filter((l) => l.axis !== "left").reverse()];
    for (const line of order) {
      ctx.strokeStyle = line.color;
      ctx.fillStyle = line.color;
      ctx.lineWidth = line.axis === "left" ? 1.5 : 2;
      ctx.setLineDash?.(line.dash || []);
      ctx.beginPath();
      line.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.stroke();
      ctx.setLineDash?.([]);
      if (line.axis === "right") {
        for (const [x, y] of line.points) {
          if (line.marker === "circle") {
            ctx.beginPath();
            ctx.arc(x, y, 3, 0, 2 * Math.PI);
            ctx.stroke();
          } else {
            ctx.fillRect(x - 2, y - 2, 4, 4);
          }
        }
      }
    }
    legend.replaceChildren(...lay.lines.map((l) => {
      const item = doc.createElement("span");
      item.className = "lit-legend-item";
      item.dataset.key = l.key;
      item.style.cssText = `color:${l.color}`;
      item.textContent = `${l.marker === "circle" ? "◌ ╌" : "■"} ${l.label}`;
      return item;
    }));
    summary.textContent = summaryLines(state).join("\n");
    summary.title = state.report || "";
    reportText.textContent = state.report || "";
    report.style.display = state.report ? "" : "none";
    root.dataset.step = String(state.step);
    root.dataset.done = String(!!state.done);
  }

  if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => draw()).observe(canvas);

  return {
    element: root,
    canvas,
    minHeight: () => 230,
    render(next) {
      state = restoreTrainState(next);
      draw();
    },
  };
}
