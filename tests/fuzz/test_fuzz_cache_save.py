"""Fuzz: the embedding cache against a lying disk, saves against races, kills and odd names, model-folder listing."""

from __future__ import annotations

import glob
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from corpus import FakeLitModel, captioned_folder, flip_bytes, tiny_tower
from safetensors.torch import load_file, save_file

from comfyui_lit.models.common.atomic import save_tensors_atomic
from comfyui_lit.models.data.dataset import load_folder
from comfyui_lit.models.data.embedding_cache import CACHE_FORMAT, EmbeddingCache, shard_checksum
from comfyui_lit.nodes import host
from comfyui_lit.nodes.tuning import LiTLoadAdapter, LiTSaveAdapter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tower():
    return tiny_tower()


@pytest.fixture()
def data(tmp_path):
    return captioned_folder(str(tmp_path / "data"), n=6)


def _shards(cache_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(cache_dir, "*", "shard-*.safetensors")))


def _fresh(tower, ds) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([tower(tower.preprocess(ds.load_image(i).unsqueeze(0))) for i in range(len(ds))])


# -- embedding cache -------------------------------------------------------------------------------------------------
def test_flipped_bytes_in_a_shard_are_caught_and_recomputed(fuzz, tower, data, tmp_path, caplog):
    cache_dir = str(tmp_path / "cache")
    ds = load_folder(data)
    EmbeddingCache(tower, cache_dir).embed_dataset(ds)
    (shard,) = _shards(cache_dir)
    flip_bytes(shard, offset_from_end=9, n=4)  # inside the tensor data; the header still parses
    cache = EmbeddingCache(tower, cache_dir)
    with caplog.at_level(logging.WARNING, logger="comfyui_lit"):
        embs, _ = fuzz(lambda: cache.embed_dataset(ds), "handled",
                       check=lambda r: torch.allclose(r[0], _fresh(tower, ds), atol=1e-5))
    assert cache.stats["bad_shards"] == 1 and cache.stats["images_encoded"] == 6
    assert sum("damaged" in r.getMessage() for r in caplog.records) == 1  # one warning
    again = EmbeddingCache(tower, cache_dir)
    again.embed_dataset(ds)
    assert again.stats["forwards"] == 0 and again.stats["bad_shards"] == 0  # the rewritten shard is trusted


@pytest.mark.parametrize("damage", ["wrong_dim", "nan", "truncated", "garbage", "no_checksum"])
def test_damaged_or_foreign_shards_never_reach_training(fuzz, tower, data, tmp_path, damage):
    cache_dir = str(tmp_path / "cache")
    ds = load_folder(data)
    EmbeddingCache(tower, cache_dir).embed_dataset(ds)
    (shard,) = _shards(cache_dir)
    tensors = load_file(shard)
    if damage in ("wrong_dim", "nan"):
        tensors = {k: (torch.randn(5) if damage == "wrong_dim" else torch.full_like(v, float("nan")))
                   for k, v in tensors.items()}
        save_file(tensors, shard, metadata={"format": CACHE_FORMAT, "sha256": shard_checksum(tensors)})
    elif damage == "truncated":
        with open(shard, "r+b") as fh:
            fh.truncate(os.path.getsize(shard) // 2)
    elif damage == "garbage":
        with open(shard, "wb") as fh:
            fh.write(os.urandom(512))
    else:
        save_file({k: v * 1e29 for k, v in tensors.items()}, shard)  # older format: no checksum
    fuzz(lambda: EmbeddingCache(tower, cache_dir).embed_dataset(ds), "handled",
         check=lambda r: r[0].shape == (6, 8) and torch.allclose(r[0], _fresh(tower, ds), atol=1e-5))


def test_unwritable_cache_is_reported_as_not_kept(fuzz, tower, data, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    cache = EmbeddingCache(tower, str(blocker))
    fuzz(lambda: cache.embed_dataset(load_folder(data)), "handled", check=lambda r: r[0].shape == (6, 8))
    assert cache.write_error and "in memory only" in cache.location() and str(blocker) in cache.location()
    ok = EmbeddingCache(tower, str(tmp_path / "ok"))
    ok.embed_dataset(load_folder(data))
    assert ok.location() == f"in {ok.dir}"


def test_tower_giving_nan_is_a_clear_error_and_nothing_cached(fuzz, data, tmp_path):
    bad = tiny_tower(seed=1)
    with torch.no_grad():
        bad.backbone[0].weight[0, 0, 0, 0] = float("nan")
    cache_dir = str(tmp_path / "cache")
    fuzz(lambda: EmbeddingCache(bad, cache_dir).embed_dataset(load_folder(data)), "clear", match="NaN")
    assert not _shards(cache_dir)


class Cancelled(Exception):
    """Stands for ComfyUI's InterruptProcessingException."""


def _cancelled(fn):
    """Run ``fn``; 'cancelled' when the interrupt propagated (the right outcome), else what it returned."""
    def run():
        try:
            return fn()
        except (Cancelled, KeyboardInterrupt):
            return "cancelled"
    return run


@pytest.mark.parametrize("exc", [Cancelled, KeyboardInterrupt])
def test_interrupt_during_first_pass_keeps_what_was_encoded(fuzz, tower, data, tmp_path, exc):
    cache_dir = str(tmp_path / "cache")
    seen = []

    def cancel():
        seen.append(1)
        if len(seen) > 4:
            raise exc  # ComfyUI's Cancel / Ctrl+C, seen from inside

    cache = EmbeddingCache(tower, cache_dir, batch_size=2)
    fuzz(_cancelled(lambda: cache.embed_dataset(load_folder(data), interrupt=cancel)), "handled",
         check=lambda r: r == "cancelled")
    assert _shards(cache_dir)
    second = EmbeddingCache(tower, cache_dir, batch_size=2)
    fuzz(lambda: second.embed_dataset(load_folder(data)), "handled", check=lambda r: r[0].shape == (6, 8))
    assert second.stats["hits"] == 4 and second.stats["images_encoded"] == 2


def test_cancel_is_checked_during_embedding_via_the_host(fuzz, tower, data, tmp_path, monkeypatch):
    calls = []

    def interrupted():
        calls.append(1)
        raise Cancelled

    monkeypatch.setattr(host, "check_interrupted", interrupted)
    progress = host.embedding_progress()
    fuzz(_cancelled(lambda: EmbeddingCache(tower, None).embed_dataset(load_folder(data), progress)), "handled",
         check=lambda r: r == "cancelled")
    assert calls  # the host's check ran before any tower work finished


def test_large_photos_are_preprocessed_one_by_one(fuzz, tower, tmp_path):
    from corpus import caption, png

    for i in range(4):
        caption(png(str(tmp_path / f"big{i}.png"), (600, 400), (i * 50, 9, 9)), f"big {i}")
    cache = EmbeddingCache(tower, None, batch_size=4)
    shapes = []
    real = cache._forward
    cache._forward = lambda px: (shapes.extend(p.shape for p in px), real(px))[1]
    fuzz(lambda: cache.embed_dataset(load_folder(str(tmp_path))), "handled", check=lambda r: r[0].shape == (4, 8))
    assert shapes and all(tuple(s) == (1, 3, 16, 16) for s in shapes)  # only tower-size pixels wait in a batch


# -- saving ----------------------------------------------------------------------------------------------------------
@pytest.fixture()
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path / "models"))
    return tmp_path / "models" / "lit"


def _save_node(model, filename, overwrite=False):
    with torch.inference_mode():
        return LiTSaveAdapter().save(model, filename, overwrite)["result"][0]


def test_concurrent_node_saves_keep_both_adapters(fuzz, models):
    results: list = []

    def save(v: float) -> None:
        results.append(_save_node(FakeLitModel(v), "race"))

    for _ in range(3):
        threads = [threading.Thread(target=save, args=(float(v),)) for v in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    fuzz(lambda: results, "handled", check=lambda r: len(set(r)) == 12)
    values = sorted(float(load_file(p)["head.weight"][0]) for p in results)
    assert values == sorted([float(v) for v in range(4)] * 3)  # every adapter is on disk under its reported name


@pytest.mark.parametrize("name,expect,check", [
    (".safetensors", "clear", None), ("....", "clear", None), ("a" * 300, "clear", None),
    ("../../escape", "clear", None), ("", "clear", None),
    ("chat_noir_é_猫", "handled", lambda p: os.path.basename(p) == "chat_noir_é_猫.safetensors"),
    (".hidden", "handled", lambda p: os.path.basename(p) == "hidden.safetensors"),
    ("sub/dir/x.safetensors", "handled", lambda p: p.endswith(os.path.join("sub", "dir", "x.safetensors"))),
])
def test_odd_adapter_names(fuzz, models, name, expect, check):
    path = fuzz(lambda: _save_node(FakeLitModel(), name), expect, check=check)
    if expect == "handled":
        assert os.path.isfile(path) and not os.path.basename(path).startswith(".")


def test_saving_onto_a_folder_or_with_nothing_connected(fuzz, models):
    os.makedirs(models / "taken.safetensors")
    fuzz(lambda: _save_node(FakeLitModel(), "taken", overwrite=True), "clear", match="folder")
    fuzz(lambda: _save_node(FakeLitModel(), "taken"), "handled",
         check=lambda p: p.endswith("taken_0001.safetensors"))
    fuzz(lambda: _save_node(None, "x"), "clear", match="nothing is connected")
    fuzz(lambda: _save_node("not a model", "x"), "clear", match="LIT_MODEL")


_SAVER = """
import os, sys, types, torch
root = sys.argv[1]
pkg = types.ModuleType("comfyui_lit"); pkg.__path__ = [root]; sys.modules["comfyui_lit"] = pkg  # no node imports
from comfyui_lit.models.common.atomic import save_tensors_atomic
big = {"w": torch.zeros(8, 1024, 1024)}  # 32 MB: the kill lands mid-write
print("ready", flush=True)
while True:
    save_tensors_atomic(big, sys.argv[2])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_saver_leaves_no_half_file_and_no_listed_orphan(fuzz, models, sig):
    os.makedirs(models, exist_ok=True)
    target = str(models / "adapter.safetensors")
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, ROOT, target], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.time() + 20
        while time.time() < deadline and not glob.glob(str(models / ".tmp-*" / "*")) and \
                not glob.glob(str(models / ".tmp-*" / ".tmp*")):
            time.sleep(0.01)
        proc.send_signal(sig)
    finally:
        proc.wait(timeout=20)
    entries = os.listdir(models)
    assert all(e == "adapter.safetensors" or e.startswith(".tmp-") for e in entries)
    assert len([e for e in entries if e.startswith(".tmp")]) <= 1  # one temp folder, no writer-level strays
    if os.path.exists(target):
        assert load_file(target)["w"].shape == (8, 1024, 1024)  # a complete file or none
    fuzz(lambda: host.list_models(host.LIT_FOLDER, include_dirs=False), "handled",
         check=lambda names: all(not n.startswith(".") for n in names))
    save_tensors_atomic({"x": torch.zeros(1)}, str(models / "next.safetensors"))  # the next save cleans up
    assert not [e for e in os.listdir(models) if e.startswith(".tmp")]


# -- model folders -----------------------------------------------------------------------------------------------------
def test_link_loops_in_a_model_folder_do_not_hang_or_repeat(fuzz, models):
    os.makedirs(models / "sub")
    save_tensors_atomic({"x": torch.zeros(1)}, str(models / "a.safetensors"))
    save_tensors_atomic({"x": torch.zeros(1)}, str(models / "sub" / "b.safetensors"))
    os.symlink(".", str(models / "loop"))
    os.symlink("..", str(models / "sub" / "up"))
    os.symlink(str(models / "self"), str(models / "self"))
    os.makedirs(models / ".tmp-1-x")
    (models / ".tmp-1-x" / "data.safetensors").write_bytes(b"")
    (models / ".tmp-old.safetensors").write_bytes(b"")
    t0 = time.perf_counter()
    names = fuzz(lambda: host.list_models(host.LIT_FOLDER, include_dirs=False), "handled",
                 check=lambda n: n == ["a.safetensors", "sub/b.safetensors"])
    assert time.perf_counter() - t0 < 5 and len(names) == 2
    with torch.inference_mode():
        choices = LiTLoadAdapter.INPUT_TYPES()["required"]["adapter"][0]
    assert choices == names


def test_save_fsyncs_the_data_before_publishing_and_the_folder_after(fuzz, models, monkeypatch):
    """Issue 8: no fsync before rename. The order is what makes a power cut leave the old file or the new one."""
    from comfyui_lit.models.common import atomic

    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def publish(real):
        def inner(src, dst, *a, **kw):
            events.append(("publish", os.fspath(dst)))
            return real(src, dst, *a, **kw)
        return inner

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", publish(real_link))
    monkeypatch.setattr(os, "replace", publish(real_replace))
    target = str(models / "f.safetensors")
    for overwrite in (False, True):
        events.clear()
        fuzz(lambda overwrite=overwrite: atomic.save_tensors_atomic({"x": torch.ones(3)}, target, overwrite=overwrite,
                                                                    unique=not overwrite), "handled",
             check=lambda p: float(load_file(p)["x"].sum()) == 3)
        kinds = [(k, os.path.basename(p)) for k, p in events]
        i = kinds.index(next(e for e in kinds if e[0] == "publish"))
        assert ("fsync", "data.safetensors") in kinds[:i]  # the bytes are on disk before the name points at them
        assert ("fsync", os.path.basename(str(models))) in kinds[i:]  # ... and the new name after


def test_many_small_shards_are_compacted_after_a_finished_pass(fuzz, tower, tmp_path, monkeypatch):
    """A long first pass flushes every few seconds; without compaction every later run opens hundreds of shards."""
    from comfyui_lit.models.data import embedding_cache as ec

    monkeypatch.setattr(ec, "FLUSH_SECONDS", 0.0)  # a shard after every batch, as a long pass would leave
    monkeypatch.setattr(ec, "COMPACT_SHARDS", 4)
    data = captioned_folder(str(tmp_path / "data"), n=12)
    cache_dir = str(tmp_path / "cache")
    seen = []

    def cancel():
        seen.append(1)
        if len(seen) > 8:
            raise KeyboardInterrupt

    first = EmbeddingCache(tower, cache_dir, batch_size=1)
    fuzz(_cancelled(lambda: first.embed_dataset(load_folder(data), interrupt=cancel)), "handled",
         check=lambda r: r == "cancelled")
    assert len(_shards(cache_dir)) == 8  # an interrupted pass leaves its shards as written
    second = EmbeddingCache(tower, cache_dir, batch_size=1)
    fuzz(lambda: second.embed_dataset(load_folder(data)), "handled",
         check=lambda r: torch.allclose(r[0], _fresh(tower, load_folder(data)), atol=1e-5))
    assert second.stats["hits"] == 8 and second.stats["shards_compacted"] == 12 and len(_shards(cache_dir)) == 1
    third = EmbeddingCache(tower, cache_dir)
    fuzz(lambda: third.embed_dataset(load_folder(data)), "handled",
         check=lambda r: torch.allclose(r[0], _fresh(tower, load_folder(data)), atol=1e-5))
    assert third.stats["forwards"] == 0 and third.stats["hits"] == 12


def test_a_crash_during_compaction_leaves_duplicates_never_a_gap(fuzz, tower, tmp_path, monkeypatch):
    from comfyui_lit.models.data import embedding_cache as ec

    monkeypatch.setattr(ec, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(ec, "COMPACT_SHARDS", 2)
    data = captioned_folder(str(tmp_path / "data"), n=6)
    cache_dir = str(tmp_path / "cache")
    real_remove = os.remove
    monkeypatch.setattr(os, "remove", lambda p: (_ for _ in ()).throw(OSError("the process died here")))
    EmbeddingCache(tower, cache_dir, batch_size=1).embed_dataset(load_folder(data))
    assert len(_shards(cache_dir)) == 7  # six small shards and the merged one: nothing deleted
    monkeypatch.setattr(os, "remove", real_remove)
    again = EmbeddingCache(tower, cache_dir, batch_size=1)
    fuzz(lambda: again.embed_dataset(load_folder(data)), "handled",
         check=lambda r: torch.allclose(r[0], _fresh(tower, load_folder(data)), atol=1e-5))
    assert again.stats["forwards"] == 0 and len(_shards(cache_dir)) == 1
