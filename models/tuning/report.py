"""The training report: what a run did, in the words a user reads in the node's text box or the terminal."""

from __future__ import annotations

from . import distributed as dist_

REPORT_KEYS = ("zero_shot_acc", "i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "loss")


def fmt_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in REPORT_KEYS if k in metrics)


def validation_table(result) -> str:
    """One line per validation: step, loss, recall (and accuracy); the kept state marked."""
    if not result.val_history:
        return ""
    keys = [k for k in ("loss", "i2t_r@5", "t2i_r@5", "mean_r@5", "zero_shot_acc") if k in result.val_history[0]]
    lines = [f"{'step':>7}" + "".join(f"{k:>14}" for k in keys)]
    for v in result.val_history:
        chosen = v["step"] == result.best_step
        mark = ("  <- kept" if result.kept == "best" and chosen else
                "  <- chosen (then refitted on every image)" if result.kept == "refit" and chosen else "")
        lines.append(f"{int(v['step']):>7}" + "".join(f"{v.get(k, float('nan')):>14.4f}" for k in keys) + mark)
    return "\n".join(lines)


def format_report(model, result, prep) -> str:
    cache = prep.cache
    head = (f"LiT locked tuning: mode {model.mode}, loss {model.loss_name}, {result.steps_done}"
            + (f"/{result.steps_total}" if result.steps_total else "") + " steps"
            + (" (interrupted)" if result.interrupted else "")
            + (f" (stopped: {result.stopped})" if result.stopped and not result.interrupted else "")
            + (f" (resumed from step {result.resumed_from})" if result.resumed_from else "")
            + (f" on {result.world_size} processes" if result.world_size > 1 else "")
            + (f" in {result.seconds:.1f}s." if result.seconds else "."))
    lines = [head,
             f"Image tower '{model.image_tower.name}' locked; text tower '{model.text_tower.name}'.",
             f"Data: {len(prep.train)} train / {len(prep.val)} validation images. {prep.report}",
             f"Embedding cache: {cache.stats['hits']} hits, {cache.stats['misses']} computed "
             f"({cache.stats['forwards']} tower forwards)"
             + (f" on rank {dist_.rank()} of {result.world_size}" if result.world_size > 1 else "")
             + f" {cache.location()}.",
             f"Speed: {result.pairs_per_second:.0f} pairs/s in the optimizer steps. "
             f"Final temperature scale {float(model.logit_scale.detach()):.2f}."]
    if getattr(result, "start", ""):
        lines.append(f"Start: {result.start} (the closed form is step 0; training keeps it unless validation "
                     "improves).")
    lines += [f"Resume: {n}" for n in result.resume_notes]
    if result.history:
        lines.append(f"Loss: {result.history[0]['loss']:.4f} -> {result.history[-1]['loss']:.4f}.")
    if result.before_metrics:
        lines.append(f"Validation before: {fmt_metrics(result.before_metrics)}")
        lines.append(f"Validation best (step {result.best_step}): {fmt_metrics(result.best_metrics)}")
        if "chance" in result.best_metrics:
            lines.append(f"(zero-shot chance level {result.best_metrics['chance']:.3f})")
        if result.kept == "refit":
            kept = (f"the refit: {result.refit}. The validation numbers above are the validated run's; the refit "
                    "has seen the validation images, so it has none of its own")
        elif result.kept == "best":
            kept = f"the best validated state (highest validation recall), step {result.best_step}"
        else:
            kept = f"the last state, step {result.steps_done}"
        lines.append(f"Kept: {kept}.")
        if result.interrupted and result.stopped not in ("", "interrupted"):  # a stop with its own reason
            lines.append(f"{result.stopped}.")
    else:
        lines.append("No validation set (dataset too small or val_fraction 0): the last state is kept.")
    return "\n".join(lines)
