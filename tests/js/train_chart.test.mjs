import { test } from "node:test";
import assert from "node:assert/strict";
import {
  MAX_POINTS, applyTrainEvent, chartLayout, decimate, emptyTrainState, lossRange, restoreTrainState, summaryLines,
} from "../../web/js/lib/train_chart.js";

function run(total, { every = 5, valEvery = 20 } = {}) {
  let s = emptyTrainState();
  for (let step = every; step <= total; step += every) {
    const metrics = { loss: 3 / step, lr: 1e-3, logit_scale: 10 + step / 100 };
    if (step % valEvery === 0) {
      Object.assign(metrics, { "val_i2t_r@1": step / total, "val_t2i_r@1": step / (2 * total) });
    }
    s = applyTrainEvent(s, { node: "4", step, total, metrics });
  }
  return s;
}

test("progress events build the loss and validation series", () => {
  const s = run(100);
  assert.equal(s.step, 100);
  assert.equal(s.total, 100);
  assert.equal(s.loss.length, 20);
  assert.deepEqual(s.loss[0], [5, 3 / 5]);
  assert.deepEqual(s.val["i2t_r@1"].map((p) => p[0]), [20, 40, 60, 80, 100]);
  assert.equal(s.val["t2i_r@1"].at(-1)[1], 0.5);
  assert.equal(s.done, false);
});

test("the input state is not modified", () => {
  const s = run(20);
  const copy = JSON.parse(JSON.stringify(s));
  applyTrainEvent(s, { step: 25, total: 100, metrics: { loss: 0.1, "val_i2t_r@1": 0.9 } });
  assert.deepEqual(s, copy);
});

test("the done event keeps the curves and records the best (unprefixed) metrics", () => {
  const s = applyTrainEvent(run(100), { node: "4", done: true, step: 100, total: 100,
                                        metrics: { "i2t_r@1": 0.8, zero_shot_acc: 0.6, note: "x" } });
  assert.equal(s.done, true);
  assert.deepEqual(s.final, { "i2t_r@1": 0.8, zero_shot_acc: 0.6 });
  assert.equal(s.loss.length, 20);
  const lines = summaryLines(s);
  assert.match(lines[0], /step 100\/100/);
  assert.match(lines[0], /done/);
  assert.match(lines[1], /^best: .*R@1 80\.0%.*zero-shot acc 60\.0%/);
});

test("a done event with a smaller step (interrupted run) does not wipe the run", () => {
  const s = applyTrainEvent(run(100), { done: true, step: 60, total: 100, metrics: {} });
  assert.equal(s.loss.length, 20);
  assert.equal(s.done, true);
});

test("a new run after a finished one starts from scratch", () => {
  let s = applyTrainEvent(run(100), { done: true, step: 100, total: 100, metrics: {} });
  s = applyTrainEvent(s, { step: 5, total: 50, metrics: { loss: 1 } });
  assert.equal(s.done, false);
  assert.equal(s.total, 50);
  assert.deepEqual(s.loss, [[5, 1]]);
  assert.deepEqual(s.val, {});
});

test("a step going backwards starts a new run", () => {
  const s = applyTrainEvent(run(100), { step: 5, total: 100, metrics: { loss: 9 } });
  assert.deepEqual(s.loss, [[5, 9]]);
});

test("malformed events and non-finite metrics are ignored", () => {
  const s0 = run(10);
  assert.equal(applyTrainEvent(s0, null), s0);
  assert.equal(applyTrainEvent(s0, { step: "x" }), s0);
  const s = applyTrainEvent(s0, { step: 15, total: 100, metrics: { loss: NaN, "val_i2t_r@1": Infinity, lr: 2e-3 } });
  assert.equal(s.loss.length, 2);
  assert.equal(s.val["i2t_r@1"], undefined);
  assert.equal(s.last.lr, 2e-3);
});

test("long runs are decimated to at most MAX_POINTS, keeping the first and the newest point", () => {
  const s = run(5000, { every: 5, valEvery: 1000 });
  assert.ok(s.loss.length <= MAX_POINTS, `${s.loss.length}`);
  assert.ok(s.loss.length > MAX_POINTS / 2);
  assert.equal(s.loss[0][0], 5);
  assert.equal(s.loss.at(-1)[0], 5000);
  const xs = s.loss.map((p) => p[0]);
  assert.deepEqual(xs, [...xs].sort((a, b) => a - b));
  assert.deepEqual(decimate([[1, 1], [2, 2], [3, 3]], 2), [[1, 1], [3, 3]]);
});

test("state survives a JSON round trip (node.properties) and bad saved values reset", () => {
  const s = run(40);
  assert.deepEqual(restoreTrainState(JSON.parse(JSON.stringify(s))), s);
  assert.deepEqual(restoreTrainState({ version: 99 }), emptyTrainState());
  assert.deepEqual(restoreTrainState("junk"), emptyTrainState());
});

test("chart layout maps steps and values into the plot box", () => {
  const s = run(100);
  const lay = chartLayout(s, 300, 150);
  const { plot } = lay;
  assert.equal(plot.x, 42);
  assert.equal(plot.w, 300 - 42 - 40);
  const loss = lay.lines.find((l) => l.key === "loss");
  assert.equal(loss.points.length, 20);
  for (const [x, y] of loss.points) {
    assert.ok(x >= plot.x && x <= plot.x + plot.w);
    assert.ok(y >= plot.y - 1e-9 && y <= plot.y + plot.h + 1e-9);
  }
  // Loss falls, so y (pixels, downwards) grows; the last step sits on the right edge.
  assert.ok(loss.points.at(-1)[1] > loss.points[0][1]);
  assert.equal(loss.points.at(-1)[0], plot.x + plot.w);
  const r1 = lay.lines.find((l) => l.key === "i2t_r@1");
  assert.equal(r1.axis, "right");
  // 100 % recall is the top of the plot.
  assert.equal(r1.points.at(-1)[1], plot.y);
  assert.deepEqual(lay.rightTicks.map((t) => t.text), ["100%", "50%", "0%"]);
});

test("empty state: no lines, a hint, sane ranges", () => {
  const lay = chartLayout(emptyTrainState(), 200, 100);
  assert.equal(lay.lines.length, 0);
  assert.match(summaryLines(emptyTrainState())[0], /Waiting/);
  assert.deepEqual(lossRange([]), [0, 1]);
  const [lo, hi] = lossRange([[1, 2], [2, 2]]);
  assert.ok(lo < 2 && hi > 2);
});

// Issue 19 (real run): two recall series with equal values hid each other, and the last x label ("300") ran into
// the right axis' "0%".
test("recall directions are told apart and the x end labels align inwards", async () => {
  const { chartLayout, applyTrainEvent, emptyTrainState } = await import("../../web/js/lib/train_chart.js");
  let s = emptyTrainState();
  for (const step of [10, 20]) {
    s = applyTrainEvent(s, { step, total: 300, metrics: { loss: 1 / step, "val_i2t_r@1": 0.5, "val_t2i_r@1": 0.5 } });
  }
  const lay = chartLayout(s, 400, 160);
  const i2t = lay.lines.find((l) => l.key === "i2t_r@1");
  const t2i = lay.lines.find((l) => l.key === "t2i_r@1");
  assert.deepEqual(i2t.points, t2i.points); // same values, same pixels ...
  assert.notDeepEqual([i2t.dash, i2t.marker], [t2i.dash, t2i.marker]); // ... but drawn differently
  const last = lay.xTicks[lay.xTicks.length - 1];
  assert.equal(last.text, "300");
  assert.equal(last.align, "right");
  assert.ok(last.x <= lay.plot.x + lay.plot.w + 1e-9);
  assert.equal(lay.xTicks[0].align, "left");
});
