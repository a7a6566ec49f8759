"""Scale-out locked tuning: 2 CPU processes (gloo, launched by the real ``torchrun``) against 1 process.

Proves: the 2-process run with per-rank batch b equals the 1-process run with batch 2b (loss history and final
weights), the image-embedding cache is built once across ranks (each rank its shard), kill-and-resume from a
checkpoint gives the same weights as an uninterrupted run (bit-equal in one process), and the streaming tar reader
yields the samples of a tar written here.

This file is also the worker that torchrun starts (``python tests/test_distributed.py worker ...``).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS, PER_RANK_BATCH, N_IMAGES = 14, 5, 26
# Workers talk over loopback only (gloo would otherwise pick the interface the host name resolves to).
_LOOPBACK_ENV = {**os.environ, "OMP_NUM_THREADS": "1",
                 **({"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")} if sys.platform == "linux"
                    else {})}


def _towers():
    """A tiny random-init CNN (locked; its features only need to be fixed, not good) and the real MiniLM."""
    from shapes_data import TinyShapesCNN

    from comfyui_lit.models.towers.image_tower import ImageTower
    from comfyui_lit.models.towers.text_tower import load_text_tower

    torch.manual_seed(0)
    net = TinyShapesCNN(dim=32).eval()
    image = ImageTower(net, embed_dim=32, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, name="tiny-random")
    return image, load_text_tower()


def _config(steps: int = STEPS, batch: int = PER_RANK_BATCH, **kw):
    from comfyui_lit.models.tuning.trainer import TrainConfig

    # val_every 4: validation and best-state selection are part of what a resume must reproduce
    return TrainConfig(steps=steps, batch_size=batch, lr=3e-3, val_fraction=0.2, val_every=4, seed=3, **kw)


def _train(data: str, cache: str, config, loss: str = "softmax", stop_at: int = 0):
    from comfyui_lit.models.data.dataset import load_folder
    from comfyui_lit.models.tuning.lit_model import LitModel
    from comfyui_lit.models.tuning.trainer import train_locked

    image, text = _towers()
    model = LitModel(image, text, mode="head", loss=loss, seed=0)

    def callback(step: int, total: int, metrics: dict) -> None:
        if step == stop_at:
            os._exit(17)  # a crash: no clean-up, no final checkpoint

    result = train_locked(model, load_folder(data), config, cache_dir=cache, callback=callback)
    return model, result


def _worker(argv: list[str]) -> None:
    sys.path.insert(0, HERE)
    import conftest  # noqa: F401 - registers the checkout as comfyui_lit

    from comfyui_lit.models.common.atomic import save_tensors_atomic
    from comfyui_lit.models.tuning import distributed

    data, cache, out, loss, ckpt, every, resume, stop_at = argv
    rank, world = distributed.init_from_env("cpu")
    cfg = _config(checkpoint_dir=ckpt or None, checkpoint_every=int(every), resume=resume == "1",
                  sigmoid_ring=loss == "sigmoid")
    model, result = _train(data, cache, cfg, loss, int(stop_at))
    with open(f"{out}.rank{rank}.json", "w") as fh:
        json.dump({"history": result.history, "val": result.val_history, "world": world,
                   "cache": result.cache_stats, "resumed_from": result.resumed_from}, fh)
    if rank == 0:
        save_tensors_atomic(model.trainable_state_dict(), out + ".safetensors")
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp, name: str, *, loss: str = "softmax", ckpt: str = "", every: int = 0, resume: bool = False,
              stop_at: int = 0) -> subprocess.CompletedProcess:
    out = str(tmp / name)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", os.path.abspath(__file__), "worker", str(tmp / "data"),
           str(tmp / "cache"), out, loss, ckpt, str(every), "1" if resume else "0", str(stop_at)]
    env = {**_LOOPBACK_ENV, "TORCHELASTIC_ERROR_FILE": str(tmp / f"{name}.err")}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def _load(tmp, name: str):
    from comfyui_lit.models.common.safetensors_io import load_tensors

    ranks = [json.load(open(tmp / f"{name}.rank{r}.json")) for r in range(2)]
    return load_tensors(str(tmp / f"{name}.safetensors")), ranks


def _close(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def test_two_processes_equal_one_process_and_resume_after_a_kill(tmp_path):
    from shapes_data import write_shapes_folder

    write_shapes_folder(str(tmp_path / "data"), N_IMAGES, seed=5)
    # 1 process, global batch 2b (its own cache folder: it must not profit from the 2-process cache)
    ref_model, ref = _train(str(tmp_path / "data"), str(tmp_path / "cache1"), _config(batch=2 * PER_RANK_BATCH))
    ref_state = ref_model.trainable_state_dict()

    run = _torchrun(tmp_path, "two")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    state, ranks = _load(tmp_path, "two")
    assert all(r["world"] == 2 for r in ranks)
    # The cache was built once across the job: each rank encoded only its shard, then read the others'.
    n = ref.cache_stats["images_encoded"]
    assert n == N_IMAGES and sum(r["cache"]["images_encoded"] for r in ranks) == n
    assert all(0 < r["cache"]["images_encoded"] < n for r in ranks)
    for r in ranks:  # the same global loss on every rank, equal to the 1-process loss
        losses = [h["loss"] for h in r["history"]]
        assert len(losses) == STEPS
        assert torch.allclose(torch.tensor(losses), torch.tensor([h["loss"] for h in ref.history]), atol=1e-5)
    assert [v["step"] for v in ranks[0]["val"]] == [v["step"] for v in ref.val_history]
    assert _close(state, ref_state, atol=1e-5)

    # Kill both ranks at step 10 (checkpoints every 4: the last one is step 8), then resume.
    ckpt = str(tmp_path / "ckpt")
    killed = _torchrun(tmp_path, "killed", ckpt=ckpt, every=4, stop_at=10)
    assert killed.returncode != 0
    assert sorted(os.listdir(ckpt)) == ["ckpt-00000004.safetensors", "ckpt-00000008.safetensors"]
    resumed = _torchrun(tmp_path, "resumed", ckpt=ckpt, every=4, resume=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    state2, ranks2 = _load(tmp_path, "resumed")
    assert ranks2[0]["resumed_from"] == 8
    assert [h["loss"] for h in ranks2[0]["history"]] == [h["loss"] for h in ranks[0]["history"]]
    assert _close(state2, state, atol=1e-6)

    # Sigmoid loss by SigLIP's chunked ring exchange (the worker turns it on for 'sigmoid') == 1 process.
    ref_model, ref = _train(str(tmp_path / "data"), str(tmp_path / "cache1"), _config(batch=2 * PER_RANK_BATCH),
                            loss="sigmoid")
    ring = _torchrun(tmp_path, "ring", loss="sigmoid")
    assert ring.returncode == 0, ring.stdout[-3000:] + ring.stderr[-3000:]
    state3, ranks3 = _load(tmp_path, "ring")
    losses = torch.tensor([h["loss"] for h in ranks3[1]["history"]])
    assert torch.allclose(losses, torch.tensor([h["loss"] for h in ref.history]), atol=1e-4)
    assert _close(state3, ref_model.trainable_state_dict(), atol=1e-5)


def test_one_process_resume_is_bit_equal(tmp_path):
    from shapes_data import write_shapes_folder

    data, cache, ckpt = str(tmp_path / "data"), str(tmp_path / "cache"), str(tmp_path / "ckpt")
    write_shapes_folder(data, N_IMAGES, seed=6)
    full_model, full = _train(data, cache, _config())

    class Crash(Exception):
        pass

    from comfyui_lit.models.data.dataset import load_folder
    from comfyui_lit.models.tuning.lit_model import LitModel
    from comfyui_lit.models.tuning.trainer import train_locked

    image, text = _towers()

    def crash_at_9(step, total, metrics):
        if step == 9:
            raise Crash

    try:
        train_locked(LitModel(image, text, mode="head", seed=0), load_folder(data),
                     _config(checkpoint_dir=ckpt, checkpoint_every=3), cache_dir=cache, callback=crash_at_9)
    except Crash:
        pass
    model = LitModel(image, text, mode="head", seed=0)
    resumed = train_locked(model, load_folder(data), _config(checkpoint_dir=ckpt, checkpoint_every=3, resume=True),
                           cache_dir=cache)
    assert resumed.resumed_from == 9  # the checkpoint of step 9 was written before the callback crashed
    assert resumed.history == full.history and resumed.val_history == full.val_history
    assert resumed.best_step == full.best_step
    a, b = model.trainable_state_dict(), full_model.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_a_checkpoint_without_decay_anchors_recomputes_them(tmp_path):
    """Checkpoints written before the decay anchors (the ridge start) were stored still resume bit-equal."""
    import json as json_

    from safetensors.torch import load_file, safe_open, save_file
    from shapes_data import write_shapes_folder

    data, cache, ckpt = str(tmp_path / "data"), str(tmp_path / "cache"), str(tmp_path / "ckpt")
    write_shapes_folder(data, 16, seed=9)
    full_model, full = _train(data, cache, _config(steps=6, checkpoint_dir=ckpt, checkpoint_every=3))
    path = os.path.join(ckpt, "ckpt-00000003.safetensors")
    os.remove(os.path.join(ckpt, "ckpt-00000006.safetensors"))
    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
    tensors = load_file(path)
    assert any(k.startswith("anchor.") for k in tensors)
    save_file({k: v for k, v in tensors.items() if not k.startswith("anchor.")}, path, metadata=meta)
    assert json_.loads(meta["lit_checkpoint"])["step"] == 3
    model, resumed = _train(data, cache, _config(steps=6, checkpoint_dir=ckpt, resume=True))
    assert resumed.resumed_from == 3 and any("anchors" in n for n in resumed.resume_notes)
    assert resumed.history == full.history and resumed.val_history == full.val_history
    a, b = model.trainable_state_dict(), full_model.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    import pytest
    from shapes_data import write_shapes_folder

    from comfyui_lit.models.common.errors import LitError

    data, ckpt = str(tmp_path / "data"), str(tmp_path / "ckpt")
    write_shapes_folder(data, 12, seed=7)
    _train(data, str(tmp_path / "c"), _config(steps=3, checkpoint_dir=ckpt, checkpoint_every=3))
    with pytest.raises(LitError, match="global_batch"):
        _train(data, str(tmp_path / "c"), _config(steps=3, batch=4, checkpoint_dir=ckpt, resume=True))


def test_per_rank_loss_rows_sum_to_the_global_loss_and_gradient():
    import torch.nn.functional as F

    from comfyui_lit.models.tuning.distributed import split_sizes
    from comfyui_lit.models.tuning.losses import ContrastiveLoss, SigmoidLoss

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(7, 6, generator=g), dim=-1)
    txt0 = torch.randn(7, 6, generator=g)
    pos = torch.eye(7, dtype=torch.bool)
    pos[1, 4] = pos[4, 1] = True  # two pairs share a caption
    assert split_sizes(7, 3) == [3, 2, 2] and split_sizes(2, 2) == [1, 1]
    for loss_fn in (ContrastiveLoss(), SigmoidLoss()):
        for p in (None, pos):
            grads = []
            for parts in ([(0, 7)], [(0, 3), (3, 5), (5, 7)]):
                txt = txt0.clone().requires_grad_(True)
                emb = F.normalize(txt, dim=-1)
                total = sum(loss_fn(img, emb, p, rows=r) for r in parts)
                full = loss_fn(img, emb, p)
                assert torch.allclose(total, full, atol=1e-5)
                total.backward()
                grads.append(txt.grad)
            assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_cli_train_needs_data_or_shards(tmp_path, capsys):
    from comfyui_lit import cli

    assert cli.main(["train", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "--shards" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["train", "--shards", "a-{0..1}.tar", "--out", "a", "--checkpoint-dir", "c",
                                          "--checkpoint-every", "5", "--resume"])
    assert args.shards == ["a-{0..1}.tar"] and args.checkpoint_every == 5 and args.resume and not args.data


def _write_tar(path: str, samples: list[tuple[str, bytes, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, png, caption in samples:
            for name, data in ((f"{key}.png", png), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _png(colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_streaming_tar_reader_yields_the_samples(tmp_path):
    import hashlib

    import pytest

    from comfyui_lit.models.common.errors import LitError
    from comfyui_lit.models.data.embedding_cache import EmbeddingCache
    from comfyui_lit.models.data.streaming import load_shards

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 0)]
    samples = [(f"s{i:03d}", _png(c), f"caption {i}\nalt {i}") for i, c in enumerate(colours)]
    _write_tar(str(tmp_path / "part-000.tar"), samples[:3])
    _write_tar(str(tmp_path / "part-001.tar"), samples[3:] + [("nocap", _png((1, 1, 1)), "")])
    for use_wds in (True, False):  # webdataset and the plain tarfile fallback read the same
        ds = load_shards(str(tmp_path / "part-{000..001}.tar"), use_webdataset=use_wds)
        assert len(ds) == 5 and [s.captions for s in ds.samples] == [[f"caption {i}", f"alt {i}"] for i in range(5)]
        assert [ds.content_hash(i) for i in range(5)] == [hashlib.sha256(s[1]).hexdigest() for s in samples]
        assert any("nocap" in name and why == "no caption" for name, why in ds.skipped)
        train, val = ds.split(0.4, seed=1)  # subsets still read their images from the tars
        for part in (train, val):
            for i in range(len(part)):
                j = int(part.samples[i].captions[0].split()[1])
                img = part.load_image(i)
                assert img.shape == (6, 8, 3)
                assert torch.allclose(img[0, 0], torch.tensor(colours[j], dtype=torch.float32) / 255)
    image, _ = _towers()
    feats, kept = EmbeddingCache(image, str(tmp_path / "cache")).embed_dataset(ds)
    assert feats.shape == (5, 32) and len(kept) == 5
    with pytest.raises(LitError, match="not found"):
        load_shards(str(tmp_path / "part-{000..002}.tar"))


def test_cli_train_runs_unchanged_under_torchrun_on_tar_shards(tmp_path):
    from shapes_data import write_shapes_folder

    from comfyui_lit.models.tuning.lit_model import read_adapter_metadata

    folder = write_shapes_folder(str(tmp_path / "folder"), 12, seed=8)
    stems = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".png"))
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s}.tar", "w") as tar:
            for stem in stems[s::2]:
                for ext in (".png", ".txt"):
                    tar.add(os.path.join(folder, stem + ext), arcname=stem + ext)
    out, ckpt = str(tmp_path / "adapter.safetensors"), str(tmp_path / "ckpt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", os.path.abspath(__file__), "cli", "train", "--shards",
           str(tmp_path / "shard-{0..1}.tar"), "--out", out, "--mode", "head", "--steps", "4", "--batch-size", "3",
           "--checkpoint-dir", ckpt, "--checkpoint-every", "2", "--device", "cpu", "--val-fraction", "0"]
    run = subprocess.run(cmd, env=_LOOPBACK_ENV, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # rank 0 writes and talks: one line naming the file and which state it holds (no validation: the last one)
    assert run.stdout.count("adapter written to") == 1
    assert f"adapter written to {out} (the last state, step 4)" in run.stdout
    assert "4/4 steps" in run.stdout and "on 2 processes" in run.stdout and "tar shards" in run.stdout
    assert read_adapter_metadata(out)["steps"] == 4
    assert sorted(os.listdir(ckpt)) == ["ckpt-00000002.safetensors", "ckpt-00000004.safetensors"]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _worker(sys.argv[2:])
elif __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "cli":
    sys.path.insert(0, HERE)
    import conftest  # noqa: F401 - registers the checkout as comfyui_lit

    from comfyui_lit.cli import main

    sys.exit(main(sys.argv[2:]))
