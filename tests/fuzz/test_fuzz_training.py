"""Fuzz: training runs that go wrong (NaN loss, signals, a bad --out, damaged or foreign checkpoints), through the
engine, the LiT Locked Tuning node (under inference mode) and the CLI. Towers: a tiny random CNN and a tiny BERT."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from corpus import captioned_folder, tiny_tower
from safetensors.torch import load_file, save_file

from comfyui_lit.models.data.dataset import from_images, load_folder
from comfyui_lit.models.tuning import checkpoints
from comfyui_lit.models.tuning.lit_model import LitModel, load_adapter
from comfyui_lit.models.tuning.trainer import TrainConfig, TrainingDiverged, train_locked
from comfyui_lit.nodes.tuning import LiTLockedTuning

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def flaky_model(nan_at: int):
    """A LitModel class whose loss turns NaN on its ``nan_at``-th evaluation (a real divergence, injected)."""

    class Flaky(LitModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            real, calls = self.adapter.loss.forward, {"n": 0}

            def forward(*a, **kw):
                calls["n"] += 1
                out = real(*a, **kw)
                return out * float("nan") if calls["n"] == nan_at else out

            self.adapter.loss.forward = forward

    return Flaky


def _images(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 16, 16, 3, generator=g)
    return imgs, "\n".join(f"picture {i} of a {'red' if i % 2 else 'blue'} thing" for i in range(n))


def _finite_text(model) -> bool:
    with torch.no_grad():
        return bool(torch.isfinite(model.encode_text(["a red thing", "a blue thing"])).all())


@pytest.fixture()
def tune_cli(lit_towers, monkeypatch, capsys):
    """``run(argv) -> (rc, out, err)``: the CLI with the fuzz towers instead of the embedded defaults."""
    from comfyui_lit import cli
    from comfyui_lit.cli import tuning as cli_tuning

    monkeypatch.setattr(cli_tuning, "towers", lambda args: lit_towers)

    def run(argv: list[str]):
        rc = cli.main(argv)
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    return run


SMALL = ["--steps", "8", "--batch-size", "4", "--val-every", "2", "--val-fraction", "0.25", "--mode", "head"]


# -- issue 1: NaN loss keeps the best validated state (engine, node, CLI) -----------------------------------------
def test_nan_loss_engine_is_a_clear_error_and_the_model_is_on_its_best_state(fuzz, lit_towers):
    imgs, caps = _images()
    model = flaky_model(9)(*lit_towers, mode="head")
    err = fuzz(lambda: train_locked(model, from_images(imgs, caps),
                                    TrainConfig(steps=10, batch_size=4, val_every=2, val_fraction=0.25)),
               "clear", match="best validated state")
    assert isinstance(err, TrainingDiverged) and err.result.kept == "best" and err.result.best_state
    now = model.trainable_state_dict()
    assert all(torch.equal(now[k], err.result.best_state[k]) for k in now) and _finite_text(model)


def test_nan_loss_node_hands_on_the_best_state_and_says_stopped(fuzz, lit_towers, monkeypatch):
    monkeypatch.setattr("comfyui_lit.nodes.tuning.LitModel", flaky_model(9))
    imgs, caps = _images()
    with torch.inference_mode():
        out = fuzz(lambda: LiTLockedTuning().train(*lit_towers, from_images(imgs, caps), "head", "softmax", 10, 4,
                                                   3e-3, 0, validation_fraction=0.25, validate_every=2),
                   "handled", check=lambda o: o["result"][1].startswith("STOPPED:"))
    assert "best validated state" in out["result"][1] and _finite_text(out["result"][0])


def test_nan_loss_cli_saves_the_best_state_and_exits_1(fuzz, tmp_path, monkeypatch, tune_cli, lit_towers):
    import comfyui_lit.models.tuning.lit_model as lit_model

    monkeypatch.setattr(lit_model, "LitModel", flaky_model(9))  # a training step, not a validation
    data = captioned_folder(str(tmp_path / "data"), n=12)
    out = str(tmp_path / "a.safetensors")
    rc, stdout, err = fuzz(lambda: tune_cli(["train", data, "--out", out, *SMALL]), "handled",
                           check=lambda r: r[0] == 1 and os.path.isfile(out))
    assert "best validated state" in err and "adapter written" in stdout
    assert _finite_text(load_adapter(out, *lit_towers))


# -- issue 1: --out is checked before any training -----------------------------------------------------------------
@pytest.mark.parametrize("where", ["missing folder", "a directory", "a file as folder"])
def test_cli_out_is_refused_before_the_towers_load(fuzz, tmp_path, monkeypatch, capsys, where):
    from comfyui_lit import cli
    from comfyui_lit.cli import tuning as cli_tuning

    def no_towers(args):
        raise AssertionError("towers loaded before --out was checked")

    monkeypatch.setattr(cli_tuning, "towers", no_towers)
    data = captioned_folder(str(tmp_path / "data"), n=3)
    (tmp_path / "dir.safetensors").mkdir()
    (tmp_path / "file").write_text("x")
    out = {"missing folder": tmp_path / "no" / "such" / "a", "a directory": tmp_path / "dir.safetensors",
           "a file as folder": tmp_path / "file" / "a.safetensors"}[where]
    fuzz(lambda: cli.main(["train", data, "--out", str(out)]), "handled", check=lambda rc: rc == 2)
    err = capsys.readouterr().err
    assert "out" in err and ("directory" in err or "cannot write" in err), err


def test_cli_out_error_names_the_input(fuzz, tmp_path):
    from comfyui_lit.cli.tuning import _check_out

    fuzz(lambda: _check_out(str(tmp_path / "no" / "x")), "clear", match="cannot write")
    (tmp_path / "d.safetensors").mkdir()
    err = fuzz(lambda: _check_out(str(tmp_path / "d")), "clear", match="directory")
    assert err.input_name == "out"
    for nameless in (".safetensors", "....", ". .sft"):  # issue 11: these saved as hidden files
        fuzz(lambda nameless=nameless: _check_out(str(tmp_path / nameless)), "clear", match="no file name")
    fuzz(lambda: _check_out(str(tmp_path / "fine")), "handled", check=lambda p: p.endswith("fine.safetensors"))


# -- issue 1 and 5: SIGTERM is handled like Ctrl+C, in training and in the first embedding pass ------------------
_TRAINER = """
import os, signal, sys, time, types
# Ctrl-C as in a terminal: a job started in the background of a non-interactive shell (CI, nohup) inherits SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler, so the INT cases would never see their signal
signal.signal(signal.SIGINT, signal.default_int_handler)
root, work, text_dir = sys.argv[1:4]
sys.path[:0] = [os.path.join(root, "tests"), os.path.join(root, "tests", "fuzz")]
pkg = types.ModuleType("comfyui_lit"); pkg.__path__ = [root]; sys.modules["comfyui_lit"] = pkg  # no node imports
from corpus import captioned_folder, tiny_tower
from comfyui_lit import cli
from comfyui_lit.cli import tuning
from comfyui_lit.models.data import embedding_cache
from comfyui_lit.models.towers.text_tower import load_text_tower
embedding_cache.FLUSH_SECONDS = 3600  # only the signal path may write the cache: that is what is tested
image, text = tiny_tower(), load_text_tower(text_dir)
real = image.forward
def slow_forward(px):
    print("@mark", flush=True); time.sleep(0.3); return real(px)
tuning.towers = lambda args: (image, text)
def progress(every):
    def on_step(step, total, metrics):
        print("@mark", flush=True); time.sleep(0.03)
    return on_step
tuning._progress = progress
# One process, several runs (startup is the cost): cmd_train returns after each signal, as the CLI does.
for phase in ("train-TERM", "train-INT", "embed-TERM", "embed-INT"):
    d = os.path.join(work, phase)
    data = captioned_folder(os.path.join(d, "data"), n=12)
    image.forward = slow_forward if phase.startswith("embed") else real
    print("@phase", phase, flush=True)
    # --patience 0: early stopping would end a run in under a second (12 steps), and on a loaded machine the
    # signal sent for it then lands in the next phase (every later case fails out of step)
    rc = cli.main(["train", data, "--out", os.path.join(d, "a.safetensors"), "--steps", "100000",
                   "--batch-size", "4", "--val-every", "3", "--val-fraction", "0.25", "--patience", "0",
                   "--cache-dir", os.path.join(d, "cache")])
    print("@rc", phase, rc, flush=True)
"""
SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT}


@pytest.fixture(scope="module")
def signalled(tmp_path_factory, tiny_text_dir):
    """Runs the CLI four times in one subprocess, signalling each run: at its 4th training step, or in its first
    embedding pass (after the first batch). Returns ``{phase: (rc, stdout, folder)}`` and the stderr."""
    work = str(tmp_path_factory.mktemp("signals"))
    proc = subprocess.Popen([sys.executable, "-c", _TRAINER, ROOT, work, tiny_text_dir], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out: dict[str, tuple[int, str, str]] = {}
    phase, marks, text = "", 0, []
    try:
        import threading

        timer = threading.Timer(240, proc.kill)  # a hang fails the cases instead of the suite
        timer.start()
        for line in proc.stdout:
            text.append(line)
            if line.startswith("@phase"):
                phase, marks, text = line.split()[1], 0, []
            elif line.startswith("@mark"):
                marks += 1
                if marks == (4 if phase.startswith("train") else 2):
                    proc.send_signal(SIGNALS[phase.split("-")[1]])
            elif line.startswith("@rc"):
                out[phase] = (int(line.split()[2]), "".join(text), os.path.join(work, phase))
        stderr = proc.stderr.read()
        proc.wait(timeout=30)
        timer.cancel()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out, stderr


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_signal_during_training_saves_the_kept_state(fuzz, signalled, lit_towers, sig):
    out, stderr = signalled
    phase = f"train-{sig}"
    rc, stdout, folder = fuzz(lambda: out[phase], "handled",
                              check=lambda r: r[0] == 0 and os.path.isfile(os.path.join(r[2], "a.safetensors")))
    assert "adapter written" in stdout and "interrupted" in stdout, stderr[-2000:]
    assert _finite_text(load_adapter(os.path.join(folder, "a.safetensors"), *lit_towers))


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_signal_during_the_first_embedding_pass_keeps_the_embeddings(fuzz, signalled, sig):
    out, stderr = signalled
    phase = f"embed-{sig}"
    want = 143 if sig == "TERM" else 130
    rc, stdout, folder = fuzz(lambda: out[phase], "handled",
                              check=lambda r: r[0] == want and not os.path.exists(os.path.join(r[2], "a.safetensors")))
    assert "Traceback" not in stderr and stderr.count("no adapter written") == 2, stderr[-2000:]
    from comfyui_lit.models.data.embedding_cache import EmbeddingCache

    again = EmbeddingCache(tiny_tower(), os.path.join(folder, "cache"), batch_size=4)
    fuzz(lambda: again.embed_dataset(load_folder(os.path.join(folder, "data"))), "handled",
         check=lambda r: r[0].shape == (12, 8))
    assert again.stats["hits"] >= 4  # the batches finished before the signal were written


# -- issue 2: non-finite training data is blamed on the data, not the learning rate ----------------------------------
def test_nan_embeddings_are_blamed_on_the_tower_not_the_lr(fuzz, lit_towers):
    bad = tiny_tower(seed=3)
    with torch.no_grad():
        bad.backbone[0].bias[0] = float("inf")
    imgs, caps = _images()
    err = fuzz(lambda: train_locked(LitModel(bad, lit_towers[1], mode="head"), from_images(imgs, caps),
                                    TrainConfig(steps=2, batch_size=4)), "clear", match="NaN or infinite")
    assert err.input_name == "image_tower"
    with torch.inference_mode():
        err = fuzz(lambda: LiTLockedTuning().train(bad, lit_towers[1], from_images(imgs, caps), "head", "softmax",
                                                   2, 4, 3e-3, 0), "clear", match="LiT Locked Tuning")
    assert err.input_name == "image_tower"


# -- issue 9: Cancel during the embedding pass stops the node (nothing downstream runs on a half dataset) --------
def test_cancel_during_embedding_stops_the_tuning_node(fuzz, lit_towers, monkeypatch):
    from comfyui_lit.nodes import host

    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled

    monkeypatch.setattr(host, "check_interrupted", cancel)
    imgs, caps = _images()

    def run():
        try:
            with torch.inference_mode():
                return LiTLockedTuning().train(*lit_towers, from_images(imgs, caps), "head", "softmax", 5, 4, 3e-3,
                                               0)
        except Cancelled:
            return "cancelled"

    fuzz(run, "handled", check=lambda r: r == "cancelled")


# -- issue 4: resume --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt_run(lit_towers, tmp_path_factory):
    """One short run that leaves checkpoints at steps 4 and 6 (each case damages a copy)."""
    imgs, caps = _images(16, seed=5)
    ds = from_images(imgs, caps)
    folder = str(tmp_path_factory.mktemp("ckpt") / "base")
    train_locked(LitModel(*lit_towers, mode="head"), ds, _ckpt_cfg(folder))
    assert [s for s, _ in checkpoints.list_checkpoints(folder)] == [6, 4]
    return ds, folder


def _ckpt_cfg(folder, **kw):
    base = {"steps": 6, "batch_size": 4, "val_every": 3, "val_fraction": 0.25, "checkpoint_dir": folder,
            "checkpoint_every": 2, "lr": 3e-3}
    return TrainConfig(**{**base, **kw})


def _damage(path: str, how: str) -> None:
    if how == "header":
        with open(path, "r+b") as fh:
            fh.seek(10)
            fh.write(b"\xff" * 20)
    elif how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    elif how == "empty":
        open(path, "wb").close()
    else:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta = dict(fh.metadata())
        tensors = load_file(path)
        info = json.loads(meta["lit_checkpoint"])
        if how == "bad_json":
            meta["lit_checkpoint"] = "{oops"
        elif how == "missing_key":
            info.pop("optimizer")
            meta["lit_checkpoint"] = json.dumps(info)
        elif how == "no_sampler":
            tensors = {k: v for k, v in tensors.items() if not k.startswith("sampler.")}
        elif how == "json_list":
            meta["lit_checkpoint"] = "[1, 2]"
        elif how == "nan_weights":
            tensors = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() and k.startswith("model.")
                           else v) for k, v in tensors.items()}
        save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("how", ["header", "truncated", "empty", "bad_json", "missing_key", "no_sampler",
                                 "json_list", "nan_weights"])
def test_damaged_latest_checkpoint_falls_back_to_the_older_one(fuzz, lit_towers, ckpt_run, tmp_path, how):
    ds, base = ckpt_run
    folder = str(tmp_path / "ckpt")
    shutil.copytree(base, folder)
    _damage(os.path.join(folder, "ckpt-00000006.safetensors"), how)
    model = LitModel(*lit_towers, mode="head")
    result = fuzz(lambda: train_locked(model, ds, _ckpt_cfg(folder, resume=True)), "handled",
                  check=lambda r: r.resumed_from == 4 and r.steps_done == 6)
    assert "ckpt-00000006" in " ".join(result.resume_notes) and "ckpt-00000006" in result.report
    assert _finite_text(model)


def test_stray_and_all_damaged_checkpoints(fuzz, lit_towers, ckpt_run, tmp_path):
    ds, base = ckpt_run
    folder = str(tmp_path / "ckpt")
    shutil.copytree(base, folder)
    save_file({"x": torch.zeros(1)}, os.path.join(folder, "ckpt-99999999.safetensors"))
    result = fuzz(lambda: train_locked(LitModel(*lit_towers, mode="head"), ds, _ckpt_cfg(folder, resume=True)),
                  "handled", check=lambda r: r.resumed_from == 6)
    assert "ckpt-99999999" in " ".join(result.resume_notes)
    for p in glob.glob(os.path.join(folder, "ckpt-0*.safetensors")):
        _damage(p, "bad_json")
    result = fuzz(lambda: train_locked(LitModel(*lit_towers, mode="head"), ds, _ckpt_cfg(folder, resume=True)),
                  "handled", check=lambda r: not r.resumed_from and r.steps_done == 6)
    notes = " ".join(result.resume_notes)
    assert "ckpt-00000004" in notes and "ckpt-00000006" in notes and "Resume:" in result.report


def test_resume_applies_a_new_lr_engine_and_cli(fuzz, lit_towers, ckpt_run, tmp_path, tune_cli):
    ds, base = ckpt_run
    folder = str(tmp_path / "ckpt")
    shutil.copytree(base, folder)
    os.remove(os.path.join(folder, "ckpt-00000006.safetensors"))
    fuzz(lambda: train_locked(LitModel(*lit_towers, mode="head"), ds, _ckpt_cfg(folder, lr=1e-2, resume=True)),
         "handled", check=lambda r: r.resumed_from == 4 and "lr 0.003 -> 0.01" in r.report)
    # the CLI: a first run writes checkpoints, the second resumes with another --lr and says so
    data = captioned_folder(str(tmp_path / "data"), n=8)
    ck = str(tmp_path / "cli_ckpt")
    common = ["train", data, "--out", str(tmp_path / "a"), "--steps", "4", "--batch-size", "4", "--val-every", "2",
              "--checkpoint-dir", ck, "--checkpoint-every", "2"]
    assert tune_cli([*common, "--lr", "0.003"])[0] == 0
    os.remove(os.path.join(ck, "ckpt-00000004.safetensors"))
    fuzz(lambda: tune_cli([*common, "--lr", "0.02", "--resume"]), "handled",
         check=lambda r: r[0] == 0 and "lr 0.003 -> 0.02" in r[1])


def test_resume_refuses_another_lora_rank(fuzz, lit_towers, tmp_path):
    imgs, caps = _images(8)
    ds = from_images(imgs, caps)
    folder = str(tmp_path / "lora")
    cfg = dict(steps=1, batch_size=4, val_fraction=0.0, checkpoint_dir=folder, checkpoint_every=1)
    train_locked(LitModel(*lit_towers, mode="lora", lora_rank=2), ds, TrainConfig(**cfg))
    err = fuzz(lambda: train_locked(LitModel(*lit_towers, mode="lora", lora_rank=4), ds,
                                    TrainConfig(**cfg, resume=True)), "clear", match="lora_rank")
    assert err.input_name == "lora_rank"


def test_resume_refuses_another_tower_of_the_same_size(fuzz, lit_towers, ckpt_run, tmp_path):
    ds, base = ckpt_run
    folder = str(tmp_path / "ckpt")
    shutil.copytree(base, folder)
    other = tiny_tower(seed=7)  # same architecture and size, other weights: another fingerprint
    err = fuzz(lambda: train_locked(LitModel(other, lit_towers[1], mode="head"), ds, _ckpt_cfg(folder, resume=True)),
               "clear", match="image_tower")
    assert err.input_name == "image_tower"


# -- our own: a dataset whose captions are all the same (a trigger word only, as LoRA sets often are) ---------------
def test_identical_captions_train_without_a_crash(fuzz, lit_towers, tmp_path, tune_cli):
    """Found by this suite: the ridge start solved a singular system (torch LinAlgError) when every caption gave
    the same text features."""
    imgs = torch.rand(8, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    same = "\n".join(["photo"] * 8)
    model = LitModel(*lit_towers, mode="head")
    fuzz(lambda: train_locked(model, from_images(imgs, same), TrainConfig(steps=3, batch_size=4)), "handled",
         check=lambda r: r.steps_done == 3 and _finite_text(model))
    with torch.inference_mode():
        fuzz(lambda: LiTLockedTuning().train(*lit_towers, from_images(imgs, same), "head", "softmax", 3, 4, 3e-3, 0),
             "handled", check=lambda o: _finite_text(o["result"][0]))
    data = captioned_folder(str(tmp_path / "data"), n=6)
    for f in os.listdir(data):
        if f.endswith(".txt"):
            with open(os.path.join(data, f), "w") as fh:
                fh.write("photo")
    out = str(tmp_path / "same.safetensors")
    fuzz(lambda: tune_cli(["train", data, "--out", out, "--steps", "3", "--batch-size", "4"]), "handled",
         check=lambda r: r[0] == 0 and os.path.isfile(out))
