// Test stand-in for ComfyUI's /scripts/app.js: records registered extensions and exposes a tiny graph.
const nodes = [];
export const app = {
  extensions: [],
  registerExtension(ext) {
    this.extensions.push(ext);
  },
  graph: {
    _nodes: nodes,
    add(node) {
      nodes.push(node);
    },
    getNodeById(id) {
      return nodes.find((n) => n.id === id) ?? null;
    },
  },
};
