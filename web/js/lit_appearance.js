// ComfyUI-LiT front-end: one recognisable colour for the pack's nodes, and the trainer's live progress
// (step, loss, validation recall) drawn on the Locked Tuning node from the `comfyui_lit.train` events.
// Loaded by ComfyUI from WEB_DIRECTORY; `app`/`api` are the host's, three folders up from /extensions/<pack>/js/.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const LIT_COLOR = "#2a3f5f";
const LIT_BGCOLOR = "#1d2b40";
const TRAIN_EVENT = "comfyui_lit.train";

function progressLine(detail) {
  const m = detail.metrics || {};
  const parts = [`step ${detail.step}/${detail.total}`];
  if (typeof m.loss === "number") parts.push(`loss ${m.loss.toFixed(3)}`);
  const r1 = m["val_i2t_r@1"] ?? m["i2t_r@1"];
  if (typeof r1 === "number") parts.push(`R@1 ${(100 * r1).toFixed(1)}%`);
  if (detail.done) parts.push("done");
  return parts.join("  ·  ");
}

app.registerExtension({
  name: "comfyui_lit.appearance",
  async setup() {
    api.addEventListener(TRAIN_EVENT, (event) => {
      const detail = event.detail || {};
      const node = app.graph?.getNodeById?.(Number(detail.node));
      if (!node) return;
      node.litProgress = progressLine(detail);
      node.setDirtyCanvas?.(true, false);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.category ?? "").startsWith("LiT")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = LIT_COLOR;
      this.bgcolor = LIT_BGCOLOR;
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (this.litProgress && !this.flags?.collapsed) {
        ctx.save();
        ctx.font = "12px sans-serif";
        ctx.fillStyle = "#9fc3ff";
        ctx.fillText(this.litProgress, 10, this.size[1] - 8);
        ctx.restore();
      }
      return result;
    };
  },
});
