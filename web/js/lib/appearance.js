// Pure logic for the pack's look: a colour pair per node category, and a title badge for the sub-categories
// (the host already badges every node with the pack's name, so the root category gets no second "LiT"). No DOM.

export const CATEGORY_STYLES = {
  "LiT": { color: "#2a3f5f", bgcolor: "#1d2b40", badge: "", badgeColor: "#3d6bb3" },
  "LiT/enhance": { color: "#5f4a2a", bgcolor: "#40321d", badge: "enhance", badgeColor: "#b3823d" },
  "LiT/restore": { color: "#2a5f4a", bgcolor: "#1d4032", badge: "restore", badgeColor: "#3db37f" },
};

/** True for the pack's own categories ("LiT" and "LiT/..."), not for e.g. "LiTe". */
export function isLitCategory(category) {
  const c = String(category ?? "");
  return c === "LiT" || c.startsWith("LiT/");
}

/** The style of a category: exact match, else its closest listed parent, else the pack's default. */
export function categoryStyle(category) {
  const c = String(category ?? "");
  if (!isLitCategory(c)) return null;
  const parts = c.split("/");
  for (let n = parts.length; n > 0; n--) {
    const key = parts.slice(0, n).join("/");
    if (CATEGORY_STYLES[key]) return { ...CATEGORY_STYLES[key], category: c };
  }
  return { ...CATEGORY_STYLES.LiT, category: c };
}

/** Which in-node widget a node type gets. */
export function widgetKindFor(nodeType) {
  switch (nodeType) {
    case "LiTLockedTuning":
      return "train_chart";
    case "LiTZeroShotClassify":
    case "LiTScore":
      return "bars";
    case "LiTEnhancementSampler":
    case "LiTRestorationSampler":
      return "compare";
    case "LiTSaveAdapter":
      return "saved";
    default:
      return null;
  }
}

/** Graph node ids to try for an event's `node` field ("7", or "3:7" inside a subgraph). */
export function nodeIdCandidates(id) {
  const raw = String(id ?? "");
  if (!raw) return [];
  const out = [];
  const tail = raw.split(":").pop();
  for (const s of [raw, tail]) {
    const n = Number(s);
    if (s !== "" && Number.isInteger(n) && !out.includes(n)) out.push(n);
  }
  if (!out.includes(raw)) out.push(raw);
  return out;
}
