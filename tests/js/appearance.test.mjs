import { test } from "node:test";
import assert from "node:assert/strict";
import { categoryStyle, isLitCategory, nodeIdCandidates, widgetKindFor } from "../../web/js/lib/appearance.js";

test("only the pack's categories are styled", () => {
  assert.equal(isLitCategory("LiT"), true);
  assert.equal(isLitCategory("LiT/enhance"), true);
  assert.equal(isLitCategory("LiTe"), false);
  assert.equal(isLitCategory("image"), false);
  assert.equal(categoryStyle("sampling"), null);
  assert.equal(categoryStyle(undefined), null);
});

test("each sub-category has its own colour and badge; unknown ones inherit the pack's", () => {
  const root = categoryStyle("LiT");
  const enh = categoryStyle("LiT/enhance");
  const res = categoryStyle("LiT/restore");
  assert.equal(new Set([root.bgcolor, enh.bgcolor, res.bgcolor]).size, 3);
  assert.equal(enh.badge, "enhance");
  assert.equal(root.badge, "");
  assert.equal(categoryStyle("LiT/restore/extra").bgcolor, res.bgcolor);
  assert.equal(categoryStyle("LiT/other").bgcolor, root.bgcolor);
  assert.equal(categoryStyle("LiT/other").category, "LiT/other");
});

test("widget kinds per node type", () => {
  assert.equal(widgetKindFor("LiTLockedTuning"), "train_chart");
  assert.equal(widgetKindFor("LiTZeroShotClassify"), "bars");
  assert.equal(widgetKindFor("LiTScore"), "bars");
  assert.equal(widgetKindFor("LiTEnhancementSampler"), "compare");
  assert.equal(widgetKindFor("LiTRestorationSampler"), "compare");
  assert.equal(widgetKindFor("LiTDataset"), null);
});

test("event node ids: plain, subgraph paths, junk", () => {
  assert.deepEqual(nodeIdCandidates("7"), [7, "7"]);
  assert.deepEqual(nodeIdCandidates("3:7"), [7, "3:7"]);
  assert.deepEqual(nodeIdCandidates(12), [12, "12"]);
  assert.deepEqual(nodeIdCandidates(null), []);
  assert.deepEqual(nodeIdCandidates("abc"), ["abc"]);
});

test("Save Adapter gets a view of the path it wrote", () => {
  assert.equal(widgetKindFor("LiTSaveAdapter"), "saved");
});
