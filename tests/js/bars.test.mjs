import { test } from "node:test";
import assert from "node:assert/strict";
import { firstPayload, probabilityRows, scoreRows, signedBar } from "../../web/js/lib/bars.js";

const probs = {
  labels: ["cat", "dog", "car"],
  images: [
    [{ label: "cat", p: 0.7 }, { label: "dog", p: 0.2 }, { label: "car", p: 0.1 }],
    [{ label: "dog", p: 0.05 }, { label: "car", p: 0.9 }, { label: "cat", p: 0.05 }],
  ],
};

test("probability rows: sorted, top-k, widths are the probabilities, best flagged", () => {
  const lay = probabilityRows([probs], { topK: 2 });
  assert.equal(lay.kind, "probs");
  assert.equal(lay.images.length, 2);
  assert.deepEqual(lay.images[0].rows.map((r) => r.label), ["cat", "dog"]);
  assert.deepEqual(lay.images[1].rows.map((r) => [r.label, r.width, r.best]),
                   [["car", 0.9, true], ["dog", 0.05, false]]);
  assert.equal(lay.images[0].rows[0].text, "70.0%");
  assert.equal(lay.hidden, 0);
});

test("probability rows: only the first N images, the rest counted", () => {
  const many = { labels: ["a"], images: Array.from({ length: 30 }, () => [{ label: "a", p: 1 }]) };
  const lay = probabilityRows(many, { maxImages: 8 });
  assert.equal(lay.images.length, 8);
  assert.equal(lay.hidden, 22);
  assert.equal(lay.total, 30);
});

test("probability rows: malformed input gives no rows, out-of-range p is clamped", () => {
  assert.equal(probabilityRows(undefined).images.length, 0);
  assert.equal(probabilityRows({ images: "x" }).images.length, 0);
  const lay = probabilityRows({ images: [[{ label: "x", p: 1.5 }, { label: "y", p: "no" }]] });
  assert.equal(lay.images[0].rows.length, 1);
  assert.equal(lay.images[0].rows[0].width, 1);
});

test("signed bars grow from the zero line", () => {
  assert.deepEqual(signedBar(0.5, -0.5, 0.5), { start: 0.5, width: 0.5, zero: 0.5 });
  assert.deepEqual(signedBar(-0.5, -0.5, 0.5), { start: 0, width: 0.5, zero: 0.5 });
  const b = signedBar(0.2, 0, 0.4);
  assert.equal(b.zero, 0);
  assert.equal(b.width, 0.5);
});

test("score rows share one scale across images and flag each image's best prompt", () => {
  const lay = scoreRows({ prompts: ["sharp", "blurry"], scores: [[0.3, 0.1], [-0.1, 0.2]] });
  assert.equal(lay.kind, "scores");
  assert.deepEqual(lay.range, [-0.1, 0.3]);
  const [a, b] = lay.images;
  assert.deepEqual(a.rows.map((r) => r.best), [true, false]);
  assert.deepEqual(b.rows.map((r) => r.best), [false, true]);
  assert.equal(a.rows[0].text, "+0.300");
  assert.equal(b.rows[0].text, "-0.100");
  // The largest score spans from zero to the right end; the negative one lies left of zero.
  assert.ok(Math.abs(a.rows[0].start + a.rows[0].width - 1) < 1e-9);
  assert.ok(b.rows[0].start + b.rows[0].width <= b.rows[0].zero + 1e-9);
  assert.ok(Math.abs(a.rows[0].zero - 0.25) < 1e-9);
});

test("score rows: missing prompt names and non-numbers are handled", () => {
  const lay = scoreRows({ prompts: ["p"], scores: [[0.1, null]] });
  assert.equal(lay.images[0].rows[1].label, "prompt 1");
  assert.equal(lay.images[0].rows[1].width, 0);
  assert.equal(lay.images[0].rows[1].text, "–");
  assert.equal(scoreRows(null).images.length, 0);
  assert.equal(firstPayload([1, 2]), 1);
  assert.equal(firstPayload(3), 3);
});

// Issue 14 item 10: 16 images x 10k prompts threw "RangeError: Maximum call stack size exceeded" (Math.min(...all)),
// and the full payload was saved with the node, so reloading the workflow threw again.
function hugeScores(images = 16, prompts = 10000) {
  let seed = 7;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
  return { prompts: Array.from({ length: prompts }, (_, i) => `prompt ${i}`),
           scores: Array.from({ length: images }, () => Array.from({ length: prompts }, rand)) };
}

test("score rows: 160k scores draw without overflowing the stack, only the best prompts per image", () => {
  const data = hugeScores();
  const lay = scoreRows([data], { maxPrompts: 20 });
  assert.equal(lay.images.length, 16);
  for (const [i, img] of lay.images.entries()) {
    assert.equal(img.rows.length, 20);
    assert.equal(img.hiddenRows, 9980);
    const best = Math.max(...data.scores[i]); // one image's 10k values still fit a spread
    assert.equal(img.rows.filter((r) => r.best).length, 1);
    assert.equal(img.rows.find((r) => r.best).value, best);
    const cut = [...data.scores[i]].sort((a, b) => b - a)[19];
    assert.ok(img.rows.every((r) => r.value >= cut));
  }
  const flat = data.scores.flat();
  assert.deepEqual(lay.range, [flat.reduce((a, b) => Math.min(a, b), 0), flat.reduce((a, b) => Math.max(a, b), 0)]);
});

test("the payload saved for a reload is small and redraws the very same bars", async () => {
  const { compactPayload } = await import("../../web/js/lib/bars.js");
  const data = hugeScores();
  const saved = compactPayload("scores", [data]);
  assert.ok(JSON.stringify(saved).length < 200_000, "saved payload should be small");
  assert.deepEqual(scoreRows(saved), scoreRows(data));
  const probs = { labels: ["a", "b", "c"], images: Array.from({ length: 40 }, () => [{ label: "a", p: 0.5 },
    { label: "b", p: 0.3 }, { label: "c", p: 0.2 }]) };
  const savedProbs = compactPayload("probs", probs, { topK: 2 });
  assert.equal(savedProbs.images.length, 16);
  assert.deepEqual(probabilityRows(savedProbs, { topK: 2 }), probabilityRows(probs, { topK: 2 }));
});
