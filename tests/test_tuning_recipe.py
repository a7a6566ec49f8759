"""The tuning recipe and its edges: learning on real held-out Flickr8k photos, one place for defaults, NaN exits
that keep the best validated state, resume (damaged and stray checkpoints, changed settings), adapter metadata."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from shapes_data import synthetic_shapes, tiny_shapes_tower
from shared_data import shared_path

from comfyui_lit.models.common.atomic import save_tensors_atomic
from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.data.dataset import from_images, load_folder
from comfyui_lit.models.data.embedding_cache import EmbeddingCache
from comfyui_lit.models.towers.text_tower import load_text_tower
from comfyui_lit.models.tuning import checkpoints, spec
from comfyui_lit.models.tuning.closed_form import ridge_map
from comfyui_lit.models.tuning.lit_model import LitModel, load_adapter, save_adapter
from comfyui_lit.models.tuning.metrics import _unique_texts, recall_at_k
from comfyui_lit.models.tuning.trainer import TrainConfig, TrainingDiverged, train_locked


@pytest.fixture(scope="module")
def text_tower():
    return load_text_tower()


@pytest.fixture(scope="module")
def shapes():
    images, captions, _ = synthetic_shapes(80, seed=4)
    return from_images(images, [" | ".join(c) for c in captions])


def _mean_r5(img, txt, captions) -> float:
    _, rel = _unique_texts(captions)
    r = recall_at_k(img, txt, rel, ks=(5,))
    return 0.5 * (r["i2t_r@5"] + r["t2i_r@5"])


def test_head_learns_on_real_held_out_photos(text_tower, tmp_path):
    """256 real Flickr8k photos: 192 to train (the trainer validates on its own share), 64 never seen (32 were too
    few: one photo moves mean R@5 by 0.03). The tuned
    head must beat the untrained one and be at least about as good as the closed-form ridge map."""
    from comfyui_lit.models.towers.image_tower import load_image_tower

    ds = load_folder(shared_path("data", "flickr8k-train800"))
    ds = ds.subset(list(range(256)))
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0)).tolist()
    train, test = ds.subset(sorted(order[:192])), ds.subset(sorted(order[192:]))
    image = load_image_tower()
    cache = str(tmp_path / "cache")
    model = LitModel(image, text_tower, mode="head", seed=0)
    untrained = LitModel(image, text_tower, mode="head", seed=0)
    result = train_locked(model, train, TrainConfig(seed=0), cache_dir=cache)
    test_feats, test = EmbeddingCache(image, cache).embed_dataset(test)
    texts, _ = _unique_texts(test.captions)
    with torch.no_grad():
        trained = _mean_r5(model.normalize_image_features(test_feats), model.encode_text(texts), test.captions)
        before = _mean_r5(untrained.normalize_image_features(test_feats), untrained.encode_text(texts),
                          test.captions)
        train_feats, train = EmbeddingCache(image, cache).embed_dataset(train)
        pairs = [(c, i) for i, cs in enumerate(train.captions) for c in cs]
        x = text_tower.encode([c for c, _ in pairs])
        y = train_feats[[i for _, i in pairs]]
        w, b = ridge_map(x, y - y.mean(0), 1.0)
        ridge = _mean_r5(F.normalize(test_feats - y.mean(0), dim=-1), F.normalize(text_tower.encode(texts) @ w + b,
                                                                                 dim=-1), test.captions)
    print(f"\nheld-out mean R@5 on 64 photos: untrained {before:.3f}, ridge {ridge:.3f}, tuned head {trained:.3f} "
          f"({result.seconds:.1f}s, kept step {result.best_step})")
    # 2026-12-03, the tower run as trained: untrained 0.070, ridge 0.695, tuned 0.756 (kept step 15). With the
    # tower's earlier swish and ImageNet pixel statistics it was 0.066 / 0.142 / 0.188, which only relative checks
    # let through: the absolute floor below catches a tower that no longer sees what its weights were trained on.
    assert trained > before + 0.04
    assert trained >= 0.9 * ridge
    assert trained >= 0.5
    # the default keep='refit': the validated choices trained again on all 192 photos, and said so
    assert result.kept == "refit" and "Kept: the refit" in result.report
    assert model.training_info["train_size"] == 192 and model.training_info["refit_steps"] == result.best_step


def test_defaults_live_in_the_spec_only():
    from comfyui_lit.cli import build_parser
    from comfyui_lit.nodes.tuning import LiTLockedTuning

    cfg = TrainConfig().resolved(spec.DEFAULT_MODE)
    args = build_parser().parse_args(["train", "data", "--out", "x.safetensors"])
    inputs = LiTLockedTuning.INPUT_TYPES()
    node = {**inputs["required"], **inputs["optional"]}
    pairs = [("steps", "steps", "steps"), ("batch_size", "batch_size", "batch_size"), ("lr", "learning_rate", "lr"),
             ("val_fraction", "validation_fraction", "val_fraction"), ("val_every", "validate_every", "val_every"),
             ("weight_decay", "weight_decay", "weight_decay"), ("init", "init", "init"), ("keep", "keep", "keep"),
             ("seed", "seed", "seed")]
    for cfg_name, node_name, cli_name in pairs:
        want = spec.default(cfg_name, spec.DEFAULT_MODE)
        cli = getattr(args, cli_name)
        cli = spec.default(cfg_name, args.mode) if cli is None else cli
        assert getattr(cfg, cfg_name) == want == node[node_name][1]["default"] == cli, cfg_name
    assert node["mode"][1]["default"] == args.mode == spec.DEFAULT_MODE
    assert node["lora_rank"][1]["default"] == args.lora_rank == spec.default("lora_rank")


def test_train_help_explains_the_options(capsys):
    from comfyui_lit.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--mode", "--loss", "--steps", "--lr", "--text-lr", "--warmup-steps", "--weight-decay",
                 "--lora-alpha", "--keep"):
        assert flag in out
    assert "What is trained" in out and "Peak learning rate" in out


def test_cli_refuses_a_directory_out_before_training(tmp_path, capsys):
    from comfyui_lit.cli import main

    (tmp_path / "adir.safetensors").mkdir()
    assert main(["train", str(tmp_path / "nodata"), "--out", str(tmp_path / "adir.safetensors")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nodata"), "--out", str(tmp_path / "no" / "such" / "a")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_nan_with_validation_resets_to_the_best_validated_state(text_tower, shapes):
    model = LitModel(tiny_shapes_tower(), text_tower, mode="head")
    real = model.adapter.loss.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] == 12 else out

    model.adapter.loss.forward = flaky
    with pytest.raises(TrainingDiverged, match="best validated state") as err:
        train_locked(model, shapes, TrainConfig(steps=20, batch_size=16, val_every=3, val_fraction=0.25))
    result = err.value.result
    assert err.value.input_name == "learning_rate" and result.report and result.kept == "best"
    now = model.trainable_state_dict()
    assert all(torch.equal(now[k], result.best_state[k]) for k in now)
    assert torch.isfinite(model.encode_text(["a red circle"])).all()


def _ckpt_cfg(folder, **kw):
    base = {"steps": 6, "batch_size": 8, "val_every": 3, "checkpoint_dir": folder, "checkpoint_every": 2}
    return TrainConfig(**{**base, **kw})


def test_resume_falls_back_past_damaged_and_stray_checkpoints(text_tower, shapes, tmp_path):
    tower, folder = tiny_shapes_tower(), str(tmp_path / "ckpt")

    class Crash(Exception):
        pass

    def crash_at_5(step, total, metrics):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train_locked(LitModel(tower, text_tower, mode="head"), shapes, _ckpt_cfg(folder), callback=crash_at_5)
    found = checkpoints.list_checkpoints(folder)
    assert [s for s, _ in found] == [4, 2]
    with open(found[0][1], "r+b") as fh:  # damage the newest one's header
        fh.seek(10)
        fh.write(b"\xff" * 20)
    save_tensors_atomic({"x": torch.zeros(1)}, os.path.join(folder, "ckpt-99999999.safetensors"))
    model = LitModel(tower, text_tower, mode="head")
    result = train_locked(model, shapes, _ckpt_cfg(folder, resume=True))
    assert result.resumed_from == 2 and result.steps_done == 6
    notes = " ".join(result.resume_notes)
    assert "ckpt-99999999" in notes and "ckpt-00000004" in notes


def test_resume_applies_a_new_lr_and_names_a_changed_rank(text_tower, shapes, tmp_path):
    tower, folder = tiny_shapes_tower(), str(tmp_path / "ckpt")
    train_locked(LitModel(tower, text_tower, mode="head"), shapes, _ckpt_cfg(folder, steps=4, lr=1e-3))
    os.remove(os.path.join(folder, "ckpt-00000004.safetensors"))
    result = train_locked(LitModel(tower, text_tower, mode="head"), shapes,
                          _ckpt_cfg(folder, steps=4, lr=5e-3, resume=True))
    assert result.resumed_from == 2 and "lr 0.001 -> 0.005" in result.report
    assert result.history[2]["lr"] > 1e-3  # step 3: the new base lr (5e-3 x 0.25) is what the schedule now scales

    lora = str(tmp_path / "lora")
    train_locked(LitModel(tower, text_tower, mode="lora", lora_rank=2), shapes, _ckpt_cfg(lora, steps=2))
    with pytest.raises(LitError) as err:
        train_locked(LitModel(tower, text_tower, mode="lora", lora_rank=4), shapes,
                     _ckpt_cfg(lora, steps=2, resume=True))
    assert err.value.input_name == "lora_rank"
    other = tiny_shapes_tower(seed=0, steps=3)  # same architecture and size, other weights
    with pytest.raises(LitError, match="image_tower"):
        train_locked(LitModel(other, text_tower, mode="lora", lora_rank=2), shapes,
                     _ckpt_cfg(lora, steps=2, resume=True))


@pytest.mark.parametrize("damage", ["bad json", "no mode", "rank"])
def test_damaged_adapter_metadata_is_a_clear_error(text_tower, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    model = LitModel(tiny_shapes_tower(), text_tower, mode="head")
    path = save_adapter(model, str(tmp_path / "a.safetensors"))
    meta = model.describe()
    if damage == "no mode":
        meta.pop("mode")
    elif damage == "rank":
        meta["lora_rank"] = "eight"
    lit = "{not json" if damage == "bad json" else json.dumps(meta)
    save_file(load_file(path), path, metadata={"format": "comfyui-lit-adapter", "format_version": "1", "lit": lit})
    with pytest.raises(LitError) as err:
        load_adapter(path, tiny_shapes_tower(), text_tower)
    assert err.value.input_name == "adapter" and "damaged" in err.value.message


def test_save_adapter_overwrites_by_default_and_says_when_it_renamed(text_tower, tmp_path, monkeypatch):
    from comfyui_lit.nodes.tuning import LiTSaveAdapter

    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path / "models"))
    model = LitModel(tiny_shapes_tower(), text_tower, mode="head")
    with torch.inference_mode():
        first = LiTSaveAdapter().save(model, "mine")
        second = LiTSaveAdapter().save(model, "mine")
        kept = LiTSaveAdapter().save(model, "mine", False)
    assert first["result"][0] == second["result"][0] and first["result"][0].endswith("mine.safetensors")
    assert second["ui"]["text"][0] == f"saved {second['result'][0]}"
    assert kept["result"][0].endswith("mine_0001.safetensors") and "overwrite is off" in kept["ui"]["text"][0]


def test_whitening_is_orthonormal_unit_variance_and_the_same_both_ways():
    from comfyui_lit.models.tuning.closed_form import whitening

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 24, generator=g) @ torch.randn(24, 24, generator=g) * 3 + 5
    basis, scale = whitening(x, 8)  # 40 images > 24 dims: the covariance path
    assert torch.allclose(basis.t() @ basis, torch.eye(8), atol=1e-5)
    z = (x - x.mean(0)) @ basis * scale
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(8), atol=1e-4)
    few = x[:20]  # 20 images < 24 dims: the Gram-matrix path; checked against the covariance's eigenvectors
    b2, s2 = whitening(few, 6)
    c = ((few - few.mean(0)).t() @ (few - few.mean(0)) / 20).double()
    evals, evecs = torch.linalg.eigh(c)
    assert torch.allclose(s2.double(), evals.flip(0)[:6].rsqrt(), rtol=1e-3)
    assert torch.allclose((b2.double().t() @ evecs.flip(1)[:, :6]).abs(), torch.eye(6, dtype=torch.float64), atol=1e-3)
    # partial whitening: 1/sqrt(var + shrink * mean var), the same directions
    b3, s3 = whitening(few, 6, shrink=0.3)
    var = evals.flip(0)[:6]
    assert torch.allclose(b3, b2) and torch.allclose(s3.double(), (var + 0.3 * var.mean()).rsqrt(), rtol=1e-3)


def test_whitened_start_early_stop_and_the_step0_point(text_tower, shapes):
    model = LitModel(tiny_shapes_tower(), text_tower, mode="head")
    starts = []
    result = train_locked(model, shapes, TrainConfig(steps=200, batch_size=64, lr=3e-2, val_every=2, patience=2,
                                                     whiten=8, val_fraction=0.25),
                          on_start=lambda total, m: starts.append((total, dict(m))))
    # the closed form was whitened to 8 dims, saved with the adapter, and both sides live in that subspace
    assert model.adapter.image_scale.numel() == 8 and "whitened to 8 dims" in result.start
    basis = model.adapter.image_basis
    txt = model.encode_text(["a red circle on a white background"])
    assert torch.allclose(txt @ basis @ basis.t(), txt, atol=1e-5) and torch.allclose(txt.norm(dim=-1), torch.ones(1))
    # step 0 is reported once, before any step, with the metrics the history holds for step 0
    assert len(starts) == 1 and starts[0][0] == 200 and starts[0][1] == {k: v for k, v in result.val_history[0].items()
                                                                          if k != "step"}
    # a big lr on 60 images stops improving: the run ends early on patience, on its best validated state
    assert result.steps_done < 200 and result.stopped.startswith("early stop")
    last = [v["step"] for v in result.val_history][-2:]
    assert all(s > result.best_step for s in last) and "early stop" in result.report
