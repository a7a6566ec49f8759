// DOM view of the Zero-Shot Classify / Score bar charts: one block per image, one bar per label or prompt,
// scrollable when there are many. Rows come from ../lib/bars.js.

const STYLE = {
  root: "width:100%;height:100%;box-sizing:border-box;overflow-y:auto;font:11px sans-serif;color:#c9d1d9;" +
        "background:#0d1117;border-radius:4px;padding:4px 6px",
  title: "color:#8b949e;margin:4px 0 2px",
  row: "display:grid;grid-template-columns:minmax(40px,38%) 1fr 52px;align-items:center;gap:6px;height:16px",
  label: "overflow:hidden;text-overflow:ellipsis;white-space:nowrap",
  track: "position:relative;height:10px;background:#21262d;border-radius:2px;overflow:hidden",
  value: "text-align:right;font-variant-numeric:tabular-nums",
};

export function createBarsView(doc = document) {
  const root = doc.createElement("div");
  root.className = "lit-bars";
  root.style.cssText = STYLE.root;
  let height = 60;

  function render(layout) {
    root.replaceChildren();
    const images = layout?.images ?? [];
    root.dataset.kind = layout?.kind ?? "";
    root.title = layout?.kind === "scores"
      ? "Cosine similarity of each image to each prompt (shared scale; the best prompt is highlighted)."
      : "Label probabilities per image (top labels; the most likely one is highlighted).";
    if (!images.length) {
      const hint = doc.createElement("div");
      hint.className = "lit-bars-empty";
      hint.style.cssText = "color:#8b949e";
      hint.textContent = "Run the workflow to see per-image bars here.";
      root.append(hint);
      height = 40;
      return;
    }
    let rows = 0;
    for (const img of images) {
      const block = doc.createElement("div");
      block.className = "lit-bars-image";
      block.dataset.index = String(img.index);
      const title = doc.createElement("div");
      title.style.cssText = STYLE.title;
      title.textContent = img.title;
      block.append(title);
      for (const r of img.rows) {
        const row = doc.createElement("div");
        row.className = "lit-bar-row" + (r.best ? " lit-best" : "");
        row.style.cssText = STYLE.row;
        row.title = `${r.label}: ${r.text}`;
        const label = doc.createElement("span");
        label.className = "lit-bar-label";
        label.style.cssText = STYLE.label + (r.best ? ";color:#e6edf3;font-weight:bold" : "");
        label.textContent = r.label;
        const track = doc.createElement("span");
        track.className = "lit-bar-track";
        track.style.cssText = STYLE.track;
        if (layout.kind === "scores") {
          const zero = doc.createElement("span");
          zero.style.cssText = `position:absolute;top:0;bottom:0;width:1px;background:#8b949e;left:${100 * r.zero}%`;
          track.append(zero);
        }
        const fill = doc.createElement("span");
        fill.className = "lit-bar-fill";
        const color = r.best ? "#3fb950" : r.value < 0 ? "#f85149" : "#388bfd";
        fill.style.cssText = `position:absolute;top:0;bottom:0;left:${(100 * r.start).toFixed(3)}%;` +
          `width:${(100 * r.width).toFixed(3)}%;background:${color}`;
        fill.dataset.width = String(r.width);
        track.append(fill);
        const value = doc.createElement("span");
        value.className = "lit-bar-value";
        value.style.cssText = STYLE.value;
        value.textContent = r.text;
        row.append(label, track, value);
        block.append(row);
        rows += 1;
      }
      if (img.hiddenRows > 0) {
        const more = doc.createElement("div");
        more.className = "lit-bars-more-rows";
        more.style.cssText = "color:#8b949e";
        more.textContent = `… ${img.hiddenRows} lower-scoring prompt(s) not shown`;
        block.append(more);
        rows += 1;
      }
      root.append(block);
    }
    if (layout.hidden > 0) {
      const more = doc.createElement("div");
      more.className = "lit-bars-more";
      more.style.cssText = "color:#8b949e;margin-top:4px";
      more.textContent = `… ${layout.hidden} more image(s) not shown (see the table output).`;
      root.append(more);
    }
    // Grow with content up to a cap; beyond it the list scrolls inside the node.
    height = Math.min(260, 16 + images.length * 24 + rows * 17 + (layout.hidden > 0 ? 20 : 0));
  }

  return { element: root, minHeight: () => height, render };
}
