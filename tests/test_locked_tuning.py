"""Locked-image tuning end to end: a tiny CNN tower pretrained here on synthetic shapes (then locked) and the
real MiniLM text tower. Proves: zero-shot accuracy on held-out images goes from chance to well above it, the
image tower is bit-identical afterwards, the embedding cache makes a second run do zero tower forwards,
save -> load reproduces logits exactly, runs are reproducible, NaN and interruption keep a good state, and bad
inputs raise LitError.
"""

from __future__ import annotations

import copy
import glob
import io
import os

import numpy as np
import pytest
import shapes_data
import torch
from PIL import Image

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.common.safetensors_io import tensor_shapes
from comfyui_lit.models.data.dataset import from_images, load_folder
from comfyui_lit.models.data.embedding_cache import EmbeddingCache
from comfyui_lit.models.retrieval import zero_shot
from comfyui_lit.models.towers.image_tower import ImageTower
from comfyui_lit.models.towers.text_tower import load_text_tower
from comfyui_lit.models.tuning import demo_data
from comfyui_lit.models.tuning.lit_model import LitModel, load_adapter, read_adapter_metadata, save_adapter
from comfyui_lit.models.tuning.report import validation_table
from comfyui_lit.models.tuning.trainer import TrainConfig, train_locked

TEMPLATES = ["a {} on a white background", "a {} on a black background", "a {} on a gray background"]
# Held-out zero-shot accuracy over the 12 "<colour> <shape>" classes (chance 1/12 = 0.083) that the 300-step
# head-mode run must reach; it reaches ~0.65-0.70 in ~3 s on one CPU thread.
ZERO_SHOT_THRESHOLD = 0.45


@pytest.fixture(scope="module")
def tower() -> ImageTower:
    return shapes_data.tiny_shapes_tower()  # cached per process: pretrained once (~6 s)


@pytest.fixture(scope="module")
def text_tower():
    return load_text_tower()


@pytest.fixture(scope="module")
def shapes():
    images, captions, labels = shapes_data.synthetic_shapes(200, seed=1)
    return from_images(images, [" | ".join(c) for c in captions])


@pytest.fixture(scope="module")
def held_out():
    images, _, labels = shapes_data.synthetic_shapes(120, seed=99)
    return images, labels


def count_forwards(module: torch.nn.Module) -> dict[str, int]:
    """Count ``module``'s forward calls and the items they saw (a live dict)."""
    counter = {"calls": 0, "items": 0}

    def hook(_mod, args, _out) -> None:
        counter["calls"] += 1
        counter["items"] += int(args[0].shape[0]) if args and torch.is_tensor(args[0]) else 0

    module.register_forward_hook(hook)
    return counter


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _zero_shot_acc(model, held_out) -> float:
    images, labels = held_out
    names = sorted(set(labels))
    probs = zero_shot.classify(model, images, names, TEMPLATES)
    return float((probs.argmax(1) == torch.tensor([names.index(x) for x in labels])).float().mean())


@pytest.fixture(scope="module")
def trained(tower, text_tower, shapes, held_out):
    tower_before = _state(tower)
    model = LitModel(tower, text_tower, mode="head", loss="softmax", seed=0)
    acc_before = _zero_shot_acc(model, held_out)
    events = []
    result = train_locked(model, shapes, TrainConfig(steps=100, batch_size=32, lr=1e-3, val_every=25, seed=0),
                          callback=lambda s, t, m: events.append((s, t, m)))
    return model, result, acc_before, tower_before, events


def _recall(m: dict) -> float:
    return sum(m[f"{d}_r@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)) / 6


def test_lit_lifts_held_out_zero_shot_accuracy_from_chance(trained, held_out):
    model, result, acc_before, _, _ = trained
    acc_after = _zero_shot_acc(model, held_out)
    print(f"\nzero-shot accuracy on 120 held-out images, 12 classes: {acc_before:.3f} -> {acc_after:.3f} "
          f"(chance 0.083); validation recall {result.before_metrics} -> {result.best_metrics}")
    assert acc_before < 0.2
    assert acc_after >= ZERO_SHOT_THRESHOLD
    # step 0 is already the closed-form start (validated, and kept unless a later state has higher recall)
    assert result.val_history[0]["step"] == 0 and "ridge start" in result.start
    assert _recall(result.best_metrics) >= _recall(result.before_metrics)
    # Starting from ridge, the training loss is already low at step 1, so it can't halve; it still falls
    # (means over 10 steps: one batch of 32 is too noisy to compare).
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert not result.interrupted and result.steps_done == 100


def test_image_tower_is_bit_identical_and_never_optimised(trained, tower):
    model, _, _, tower_before, _ = trained
    after = tower.state_dict()
    assert after.keys() == tower_before.keys()
    assert all(torch.equal(after[k], tower_before[k]) for k in after)
    assert all(not p.requires_grad and p.grad is None for p in tower.parameters())
    ids = {id(p) for p in tower.parameters()}
    assert not any(id(p) in ids for p in model.trainable_parameters())
    assert not tower.training  # still eval: BatchNorm statistics / dropout locked
    model.train()
    assert not tower.training


def test_callback_report_and_metadata(trained):
    model, result, _, _, events = trained
    assert [e[0] for e in events] == list(range(1, 101)) and all(e[1] == 100 for e in events)
    assert {"loss", "lr", "logit_scale"} <= set(events[0][2])
    assert "val_i2t_r@1" in events[24][2] and "val_i2t_r@1" not in events[23][2]
    assert [v["step"] for v in result.val_history] == [0, 25, 50, 75, 100]
    assert "Validation best" in result.report and "tower forwards" in result.report
    info = model.describe()
    assert info["steps"] == 100 and info["dataset_size"] == 200 and info["metrics"]


def test_save_load_reproduces_logits_exactly(trained, tower, text_tower, tmp_path, held_out):
    model, _, _, _, _ = trained
    path = save_adapter(model, str(tmp_path / "shapes_head"))
    assert path.endswith(".safetensors")
    shapes_ = tensor_shapes(path)
    # trained + the image statistics (centre, and the whitening when the closed-form start chose one)
    whiten = {"whiten.basis", "whiten.scale"} if model.adapter.image_scale.numel() else set()
    assert set(shapes_) == {"head.weight", "head.bias", "loss.log_scale", "center.image"} | whiten
    if whiten:
        assert shapes_["whiten.basis"] == (64, model.adapter.image_scale.numel())
    meta = read_adapter_metadata(path)
    assert meta["image_tower"]["fingerprint"] == tower.fingerprint
    assert meta["text_tower"]["fingerprint"] == text_tower.fingerprint
    assert meta["mode"] == "head" and meta["loss"] == "softmax" and meta["embed_dim"] == 64
    assert meta["steps"] == 100 and meta["dataset_size"] == 200 and "i2t_r@1" in meta["metrics"]
    assert not glob.glob(str(tmp_path / ".tmp-*"))
    images = held_out[0][:6]
    texts = ["a red circle on a white background", "a blue square"]
    with torch.inference_mode():
        loaded = load_adapter(path, tower, text_tower)
        assert torch.equal(loaded.logits(images, texts), model.logits(images, texts))
    other = shapes_data.tiny_shapes_tower(seed=0, steps=3)  # same architecture, different weights
    with pytest.raises(LitError, match="belongs to other encoders") as err:
        load_adapter(path, other, text_tower)
    assert "force" in err.value.fix
    forced = load_adapter(path, other, text_tower, force=True)
    assert torch.equal(forced.encode_text(texts), model.encode_text(texts))
    # the head maps text onto the embeddings of the views it was trained on: other views are refused by name
    whole = copy.deepcopy(tower).set_views("whole photo")
    with pytest.raises(LitError, match="'centre crop' views") as err:
        load_adapter(path, whole, text_tower, force=True)
    assert "views to 'centre crop'" in err.value.fix
    as_whole = copy.deepcopy(model)
    as_whole.image_tower.set_views("whole photo")
    whole_path = save_adapter(as_whole, str(tmp_path / "shapes_whole"))
    assert load_adapter(whole_path, whole, text_tower).image_tower.views == "whole photo"
    with pytest.raises(LitError, match="'whole photo' views"):
        load_adapter(whole_path, tower, text_tower)
    with pytest.raises(LitError, match="not a LiT adapter"):
        demo_path = str(tmp_path / "plain.safetensors")
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, demo_path)
        load_adapter(demo_path, tower, text_tower)


def test_lora_and_sigmoid_train_save_load_under_inference_mode(tower, shapes, tmp_path):
    # As inside ComfyUI: towers loaded under inference mode, the node lifts it only to train.
    with torch.inference_mode():
        shared_text = load_text_tower()
        original = _state(shared_text.model)
        with torch.inference_mode(False), torch.enable_grad():  # what nodes/host.py's trainable() does
            model = LitModel(tower, shared_text, mode="lora", loss="sigmoid", lora_rank=4, lora_alpha=8)
            assert model.text_layers == 2  # the default: LoRA on the top 2 of MiniLM's 6 layers
            lowest = count_forwards(model.text_tower.model.encoder.layer[0])
            seen = []
            # A random head: this checks that LoRA + sigmoid learn (from the ridge start, 12 steps of batch 16
            # are within the batch-to-batch noise of the training loss), and skips ridge's pass over 850 captions.
            result = train_locked(model, shapes, TrainConfig(steps=12, batch_size=16, lr=2e-3, grad_accum=2,
                                                             val_every=6, init="random"),
                                  callback=lambda s, t, m: seen.append(lowest["calls"]))
        assert result.history[-1]["loss"] < result.history[0]["loss"]
        # the frozen lower layers ran once per distinct caption before step 1, never in a step or a validation
        assert seen[0] > 0 and len(set(seen)) == 1
        assert result.history[-1]["logit_bias"] != -10.0
        # the shared text tower object is untouched (LoRA went into a private copy)
        assert all(torch.equal(v, original[k]) for k, v in shared_text.model.state_dict().items())
        assert not any("lora" in n for n, _ in shared_text.model.named_modules())
        path = save_adapter(model, str(tmp_path / "lora.safetensors"))
        names = set(tensor_shapes(path))
        assert {"head.weight", "loss.log_scale", "loss.bias", "center.image"} <= names
        # head weight+bias, scale, bias, image centre; then the top 2 layers x 6 linears x (A, B)
        assert any(n.endswith("lora_A") for n in names) and len(names) == 5 + 2 * 6 * 2
        assert all(".layer.4." in n or ".layer.5." in n for n in names if "lora" in n)
        loaded = load_adapter(path, tower, shared_text)
        images = torch.rand(3, 32, 32, 3)
        texts = ["a green triangle", "a yellow circle on a black background"]
        assert torch.equal(loaded.logits(images, texts), model.logits(images, texts))
        assert read_adapter_metadata(path)["lora_rank"] == 4 and read_adapter_metadata(path)["text_layers"] == 2


def test_cache_second_run_does_zero_tower_forwards(tower, text_tower, tmp_path):
    folder = shapes_data.write_shapes_folder(str(tmp_path / "shapes"), 40, seed=3)
    # A JPEG cut short: its header passes the indexing check, only decoding fails (at embedding time).
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=90)
    with open(os.path.join(folder, "zz_truncated.jpg"), "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with open(os.path.join(folder, "zz_truncated.txt"), "w") as fh:
        fh.write("a truncated file\n")
    ds = load_folder(folder)
    counter = count_forwards(tower.backbone)
    cfg = TrainConfig(steps=5, batch_size=8, val_fraction=0.2, embed_batch_size=16)
    progress = []
    first = train_locked(LitModel(tower, text_tower, mode="head"), ds, cfg,
                         embed_progress=lambda done, total: progress.append((done, total)))
    assert progress and progress[-1][0] == progress[-1][1] and all(d <= t for d, t in progress)
    n_first = counter["calls"]
    assert n_first > 0 and counter["items"] == 40  # every readable image encoded exactly once
    assert first.cache_stats["misses"] == 41 and first.cache_stats["unreadable"] == 1
    assert "zz_truncated.jpg" in first.dataset_report
    shards = glob.glob(os.path.join(folder, ".lit_cache", "*", "shard-*.safetensors"))
    assert shards and not glob.glob(os.path.join(folder, ".lit_cache", "*", ".tmp-*"))
    second = train_locked(LitModel(tower, text_tower, mode="head"), load_folder(folder), cfg)
    assert counter["calls"] == n_first  # zero image-tower forwards on the second run
    assert second.cache_stats["forwards"] == 0 and second.cache_stats["hits"] == 40
    # a different preprocessing (input size) is a different cache key: recomputed, not reused
    resized = ImageTower(tower.backbone, embed_dim=64, input_size=24, mean=(0.5,) * 3, std=(0.5,) * 3,
                         name="resized", crop=True)
    embs, kept = EmbeddingCache(resized, os.path.join(folder, ".lit_cache")).embed_dataset(load_folder(folder))
    assert counter["calls"] > n_first and embs.shape == (40, 64) and len(kept) == 40
    # cached embeddings equal a fresh forward
    cache = EmbeddingCache(tower, os.path.join(folder, ".lit_cache"))
    embs, kept = cache.embed_dataset(load_folder(folder))
    assert cache.stats["forwards"] == 0
    fresh = tower.encode(kept.load_image(0).unsqueeze(0))
    assert torch.allclose(embs[0], fresh[0], atol=1e-6)


def test_uncached_mode_runs_the_tower_every_step(tower, text_tower, shapes):
    counter = count_forwards(tower.backbone)
    cfg = dict(steps=4, batch_size=8, val_fraction=0.0, cache_embeddings=False)
    train_locked(LitModel(tower, text_tower, mode="head"), shapes, TrainConfig(init="random", **cfg))
    assert counter["calls"] == 4 and counter["items"] == 32  # one forward per step, the step's images only
    # The ridge start (the default) needs every training image's embedding once, in one pass, before step 1.
    counter.update(calls=0, items=0)
    train_locked(LitModel(tower, text_tower, mode="head"), shapes, TrainConfig(**cfg))
    assert counter["calls"] == 1 + 4 and counter["items"] == len(shapes) + 32


def test_reproducible_with_a_seed(tower, text_tower, shapes):
    def run(seed: int) -> dict[str, torch.Tensor]:
        model = LitModel(tower, text_tower, mode="head", seed=seed)
        train_locked(model, shapes, TrainConfig(steps=20, batch_size=16, seed=seed, val_every=10))
        return model.trainable_state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)

    def run_lora() -> dict[str, torch.Tensor]:
        model = LitModel(tower, text_tower, mode="lora", lora_rank=2)
        torch.manual_seed(123)  # the caller's RNG state must not matter...
        train_locked(model, shapes, TrainConfig(steps=3, batch_size=8, val_fraction=0.0, seed=5))
        return model.trainable_state_dict()

    first = run_lora()
    torch.rand(7)
    second = run_lora()
    assert all(torch.equal(first[k], second[k]) for k in first)
    state = torch.random.get_rng_state()
    run_lora()
    assert torch.equal(state, torch.random.get_rng_state())  # ...and training leaves it untouched


def test_nan_loss_stops_with_error_and_keeps_last_good_state(tower, text_tower, shapes):
    model = LitModel(tower, text_tower, mode="head")
    real_forward = model.adapter.loss.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = real_forward(*args, **kwargs)
        return out * float("nan") if calls["n"] == 4 else out

    model.adapter.loss.forward = flaky
    states = {}
    with pytest.raises(LitError, match="step 4") as err:
        train_locked(model, shapes, TrainConfig(steps=10, batch_size=8, val_fraction=0.0),
                     callback=lambda s, t, m: states.__setitem__(s, model.trainable_state_dict()))
    assert err.value.result.steps_done == 3
    now = model.trainable_state_dict()
    assert all(torch.equal(now[k], states[3][k]) for k in now)


class Cancelled(Exception):
    pass


def test_interruption_returns_best_state(tower, text_tower, shapes):
    model = LitModel(tower, text_tower, mode="head")

    def cancel_at_15(step, total, metrics):
        if step == 15:
            raise Cancelled()

    # A random start, so the validated states of steps 5-15 beat step 0 (the ridge start often stays the best
    # this early, which would not show that a trained state is the one kept).
    result = train_locked(model, shapes, TrainConfig(steps=50, batch_size=16, val_every=5, init="random"),
                          callback=cancel_at_15, interrupt_exceptions=(Cancelled,))
    assert result.interrupted and result.steps_done == 15
    assert result.best_step in (5, 10, 15)
    now = model.trainable_state_dict()
    assert all(torch.equal(now[k], result.best_state[k]) for k in now)
    stopped = train_locked(LitModel(tower, text_tower, mode="head"), shapes, TrainConfig(steps=50, batch_size=16),
                           should_stop=lambda: True)
    assert stopped.interrupted and stopped.steps_done == 0
    with pytest.raises(RuntimeError):  # other exceptions are real errors, not cancellations
        train_locked(LitModel(tower, text_tower, mode="head"), shapes, TrainConfig(steps=5, batch_size=8),
                     callback=lambda s, t, m: (_ for _ in ()).throw(RuntimeError("boom")))


def test_bad_inputs_raise_lit_error(tower, text_tower, shapes):
    with pytest.raises(LitError, match="mode"):
        LitModel(tower, text_tower, mode="prefix")
    with pytest.raises(LitError, match="loss"):
        LitModel(tower, text_tower, mode="head", loss="hinge")
    model = LitModel(tower, text_tower, mode="head")
    with pytest.raises(LitError, match="steps"):
        train_locked(model, shapes, TrainConfig(steps=0))
    with pytest.raises(LitError, match="lr"):
        train_locked(model, shapes, TrainConfig(lr=-1.0))
    with pytest.raises(LitError, match="at least 2"):
        train_locked(model, from_images(torch.rand(1, 8, 8, 3), ["only one"]), TrainConfig(steps=2))


def test_default_towers_on_skimage_photos(tmp_path, text_tower):
    """Real weights: locked EfficientNet-Lite0 + MiniLM, head mode, on the scikit-image photos with written
    captions. Validation images are other crops of the training photos, so this shows the real towers train
    (recall@k before -> after), not generalisation to new photos."""
    from comfyui_lit.models.data.dataset import load_folder
    from comfyui_lit.models.towers.image_tower import load_image_tower

    folder = demo_data.skimage_captioned_set(str(tmp_path / "photos"), crops_per_photo=2)
    ds = load_folder(folder)
    assert len(ds) >= 45  # >= 15 photos available offline, 3 images each
    model = LitModel(load_image_tower(), text_tower, mode="head")
    result = train_locked(model, ds, TrainConfig(steps=150, batch_size=32, val_fraction=0.25, val_every=50))
    before, after = result.before_metrics, result.best_metrics
    print(f"\nskimage photos, default towers: recall before {before} -> after {after}")
    # Step 0 is the closed-form ridge start, already far above chance (1 / the ~12 validation images) with real
    # towers; the kept state is at least as good on validation recall.
    assert before["i2t_r@1"] >= 0.4
    assert _recall(after) >= _recall(before)
    assert after["i2t_r@1"] >= max(before["i2t_r@1"], 0.7) and after["t2i_r@5"] >= 0.8
    assert result.cache_stats["misses"] == len(ds)


def test_class_name_captions_report_zero_shot_accuracy(tower, text_tower):
    images, _, labels = shapes_data.synthetic_shapes(96, seed=21)
    ds = from_images(images, labels)  # captions are the 12 class names
    model = LitModel(tower, text_tower, mode="head")
    result = train_locked(model, ds, TrainConfig(steps=60, batch_size=32, val_fraction=0.25, val_every=30))
    assert result.before_metrics["chance"] == pytest.approx(1 / 12)
    assert [v["step"] for v in result.val_history] == [0, 30, 60]
    # Step 0 is the closed-form ridge start, which already learns from the captions: the class names must be
    # told apart far above chance there. The kept state is chosen on validation recall (not on zero-shot accuracy,
    # which can dip by a validation image or two as recall rises: 0.71 -> 0.62 on one CPU, equal on another), so
    # recall may only rise and the accuracy must stay far above chance.
    before, best = result.before_metrics["zero_shot_acc"], result.best_metrics["zero_shot_acc"]
    assert before >= 0.5 and best >= 0.5
    assert _recall(result.best_metrics) >= _recall(result.before_metrics)
    # and the kept adapter names unseen shapes far better than an untrained head does
    unseen_images, _, unseen_labels = shapes_data.synthetic_shapes(48, seed=22)
    unseen = (unseen_images, unseen_labels)
    untrained = _zero_shot_acc(LitModel(tower, text_tower, mode="head"), unseen)
    assert _zero_shot_acc(model, unseen) > untrained + 0.25
    assert "zero_shot_acc" in result.report and "chance level" in result.report


def test_full_mode_trains_a_private_copy_and_round_trips(tower, text_tower, shapes, tmp_path):
    from transformers import BertConfig, BertModel

    from comfyui_lit.models.towers.text_tower import TextTower

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=text_tower.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    small = TextTower(bert.eval(), text_tower.tokenizer, pooling="mean", name="tiny-bert", arch="bert",
                      max_length=32, hidden_size=32)
    original = _state(small.model)
    model = LitModel(tower, small, mode="full")
    train_locked(model, shapes, TrainConfig(steps=3, batch_size=8, val_fraction=0.0, lr=1e-2))
    assert all(torch.equal(v, original[k]) for k, v in small.model.state_dict().items())  # shared one untouched
    trained = model.text_tower.model.state_dict()
    assert not all(torch.equal(v, original[k]) for k, v in trained.items())
    path = save_adapter(model, str(tmp_path / "full.safetensors"))
    assert {k for k in tensor_shapes(path) if k.startswith("text.")} == {f"text.{k}" for k in trained}
    loaded = load_adapter(path, tower, small)
    images, texts = torch.rand(2, 32, 32, 3), ["a red square", "a blue circle"]
    assert torch.equal(loaded.logits(images, texts), model.logits(images, texts))


# -- keep='refit' (the default): the validated choices trained again on every image ---------------------------
_REFIT_RUN = dict(steps=30, batch_size=32, lr=1e-3, val_every=10, seed=0)


def test_refit_is_the_validated_choices_trained_on_every_image(tower, text_tower, shapes):
    model = LitModel(tower, text_tower, mode="head", seed=0)
    result = train_locked(model, shapes, TrainConfig(**_REFIT_RUN))
    assert result.kept == "refit" and set(result.closed_form) == {"whiten", "ridge_alpha"}
    assert result.best_step >= 1  # validation chose a trained state, so the refit has steps to run
    info = model.training_info
    assert info["kept"] == "refit" and info["train_size"] == len(shapes) and info["val_size"] == 0
    assert info["refit_steps"] == result.best_step and "Kept: the refit" in result.report
    assert "<- chosen (then refitted on every image)" in validation_table(result)
    # the same thing by hand: a fresh model, no validation share, the chosen settings and step count
    ref = LitModel(tower, text_tower, mode="head", seed=0)
    steps = result.best_step
    train_locked(ref, shapes, TrainConfig(**{**_REFIT_RUN, "steps": steps}, val_fraction=0.0, keep="last",
                                          whiten=int(result.closed_form["whiten"]), warmup_steps=max(1, steps // 20),
                                          ridge_alpha=float(result.closed_form["ridge_alpha"]), patience=0))
    mine, theirs = model.trainable_state_dict(), ref.trainable_state_dict()
    assert mine.keys() == theirs.keys() and all(torch.allclose(mine[k], theirs[k], atol=1e-6) for k in mine)
    # and it is not the validated run's state (that one never saw the validation images)
    best = LitModel(tower, text_tower, mode="head", seed=0)
    train_locked(best, shapes, TrainConfig(**_REFIT_RUN, keep="best"))
    assert not torch.allclose(best.trainable_state_dict()["center.image"], mine["center.image"])


def test_a_cancel_during_the_refit_leaves_the_best_validated_state(tower, text_tower, shapes):
    best = LitModel(tower, text_tower, mode="head", seed=0)
    kept = train_locked(best, shapes, TrainConfig(**_REFIT_RUN, keep="best"))
    assert kept.best_step >= 1

    def cancel(step: int, total: int) -> None:
        raise RuntimeError("cancelled by the host")  # what ComfyUI's interrupt does from the node's hook

    model = LitModel(tower, text_tower, mode="head", seed=0)
    with pytest.raises(RuntimeError, match="cancelled"):
        train_locked(model, shapes, TrainConfig(**_REFIT_RUN), on_refit=cancel)
    mine, theirs = model.trainable_state_dict(), best.trainable_state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)

    def ctrl_c(step: int, total: int) -> None:
        raise KeyboardInterrupt  # the CLI's Ctrl-C is caught: the run ends on the best validated state, and says so

    model = LitModel(tower, text_tower, mode="head", seed=0)
    result = train_locked(model, shapes, TrainConfig(**_REFIT_RUN), on_refit=ctrl_c)
    assert result.interrupted and result.kept == "best" and "refit" in result.stopped
    assert "The refit on every image was stopped" in result.report
    assert model.training_info["kept"] == "best" and model.training_info["val_size"] > 0
    mine = model.trainable_state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_without_validation_there_is_nothing_to_refit(tower, text_tower, shapes):
    model = LitModel(tower, text_tower, mode="head", seed=0)
    result = train_locked(model, shapes, TrainConfig(**{**_REFIT_RUN, "steps": 5}, val_fraction=0.0))
    assert result.kept == "last" and not result.refit and model.training_info["train_size"] == len(shapes)
