import { test } from "node:test";
import assert from "node:assert/strict";
import {
  beforeClipPath, clamp01, comparePairs, containRect, cycleIndex, fractionFromKey, fractionFromPointer, viewPath,
} from "../../web/js/lib/slider.js";

test("pointer position maps to a clamped fraction of the box", () => {
  assert.equal(fractionFromPointer(150, 100, 200), 0.25);
  assert.equal(fractionFromPointer(50, 100, 200), 0);
  assert.equal(fractionFromPointer(900, 100, 200), 1);
  assert.equal(fractionFromPointer(10, 0, 0), 0.5);
  assert.equal(clamp01(NaN), 0.5);
});

test("keys move the divider in steps; other keys do nothing", () => {
  assert.ok(Math.abs(fractionFromKey(0.5, "ArrowLeft") - 0.45) < 1e-12);
  assert.ok(Math.abs(fractionFromKey(0.5, "ArrowRight") - 0.55) < 1e-12);
  assert.equal(fractionFromKey(0.98, "ArrowRight"), 1);
  assert.equal(fractionFromKey(0.5, "Home"), 0);
  assert.equal(fractionFromKey(0.5, "End"), 1);
  assert.equal(fractionFromKey(0.5, "a"), null);
});

test("clip path hides the before image right of the divider", () => {
  assert.equal(beforeClipPath(0.25), "inset(0 75.000% 0 0)");
  assert.equal(beforeClipPath(1), "inset(0 0.000% 0 0)");
  assert.equal(beforeClipPath(-3), "inset(0 100.000% 0 0)");
});

test("contain fit centres the image", () => {
  assert.deepEqual(containRect(200, 100, 100, 100), { x: 0, y: 25, w: 100, h: 50 });
  assert.deepEqual(containRect(100, 200, 100, 100), { x: 25, y: 0, w: 50, h: 100 });
  assert.deepEqual(containRect(0, 0, 10, 20), { x: 0, y: 0, w: 10, h: 20 });
});

test("view path escapes names", () => {
  assert.equal(viewPath({ filename: "a b&c.png", subfolder: "x/y", type: "temp" }),
               "/view?filename=a+b%26c.png&subfolder=x%2Fy&type=temp");
  assert.equal(viewPath({ filename: "z.png" }), "/view?filename=z.png&subfolder=&type=temp");
});

test("compare pairs keep only complete records and copy them", () => {
  const ok = { before: { filename: "b.png", subfolder: "", type: "temp" }, after: { filename: "a.png" } };
  const pairs = comparePairs([ok, { before: ok.before }, null, { before: { filename: "" }, after: ok.after }]);
  assert.equal(pairs.length, 1);
  assert.notEqual(pairs[0].before, ok.before);
  assert.deepEqual(pairs[0], ok);
  assert.deepEqual(comparePairs("x"), []);
});

test("batch navigation wraps around", () => {
  assert.equal(cycleIndex(0, -1, 3), 2);
  assert.equal(cycleIndex(2, 1, 3), 0);
  assert.equal(cycleIndex(5, 1, 0), 0);
});
