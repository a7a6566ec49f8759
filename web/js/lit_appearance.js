// ComfyUI-LiT front-end: gives the pack's nodes one recognisable colour so LiT graphs read at a glance.
// Loaded by ComfyUI from WEB_DIRECTORY; `app` is the host's, three folders up from /extensions/<pack>/js/.
import { app } from "../../../scripts/app.js";

const LIT_COLOR = "#2a3f5f";
const LIT_BGCOLOR = "#1d2b40";

app.registerExtension({
  name: "comfyui_lit.appearance",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.category ?? "").startsWith("LiT")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = LIT_COLOR;
      this.bgcolor = LIT_BGCOLOR;
      return result;
    };
  },
});
