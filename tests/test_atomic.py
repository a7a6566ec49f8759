"""Saving never loses a file: exclusive create, fsync + rename, temps cleaned, names made safe."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from comfyui_lit.models.common import atomic
from comfyui_lit.models.common.atomic import clean_stale_temps, safe_relative_name, save_tensors_atomic
from comfyui_lit.models.common.errors import LitError


def _t(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4, 4), v)}


def test_round_trip_matches_safetensors_reference_and_leaves_one_file(tmp_path):
    path = str(tmp_path / "a.safetensors")
    tensors = {"w": torch.randn(3, 5), "b": torch.arange(4, dtype=torch.int64), "h": torch.randn(2).bfloat16()}
    assert save_tensors_atomic(tensors, path, metadata={"k": "v"}) == path
    loaded = load_file(path)
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(path, framework="pt") as fh:
        assert fh.metadata() == {"k": "v"}
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temp of ours, none of safetensors' own .tmpXXXX
    mode = os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_overwrite_off_refuses_and_unique_numbers(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_tensors_atomic(_t(1), path)
    with pytest.raises(LitError, match="already exists"):
        save_tensors_atomic(_t(2), path, overwrite=False)
    assert float(load_file(path)["w"][0, 0]) == 1.0  # untouched
    second = save_tensors_atomic(_t(2), path, overwrite=False, unique=True)
    assert second.endswith("a_0001.safetensors") and float(load_file(second)["w"][0, 0]) == 2.0
    save_tensors_atomic(_t(3), path)  # overwrite=True (default) replaces
    assert float(load_file(path)["w"][0, 0]) == 3.0


def test_concurrent_saves_of_one_name_never_both_win(tmp_path, monkeypatch):
    """Both writers pass any exists-check before either publishes; exactly one may get the name."""
    path = str(tmp_path / "same.safetensors")
    barrier = threading.Barrier(2)
    real_link = os.link
    first = threading.local()

    def slow_link(src, dst):
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait(timeout=10)  # both have written their temp and are about to publish
        return real_link(src, dst)

    monkeypatch.setattr(atomic.os, "link", slow_link)
    results: dict[int, object] = {}

    def save(i: int, unique: bool) -> None:
        first.done = False
        try:
            results[i] = save_tensors_atomic(_t(float(i)), path, overwrite=False, unique=unique)
        except LitError as err:
            results[i] = err

    for unique in (False, True):
        for p in tmp_path.iterdir():
            p.unlink()
        threads = [threading.Thread(target=save, args=(i, unique)) for i in (1, 2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if unique:
            assert all(isinstance(r, str) for r in results.values())
            assert len(set(results.values())) == 2  # distinct names, both reported
            vals = {float(load_file(r)["w"][0, 0]) for r in results.values()}
            assert vals == {1.0, 2.0}  # nothing lost
        else:
            errs = [r for r in results.values() if isinstance(r, LitError)]
            assert len(errs) == 1 and "already exists" in str(errs[0])
        barrier.reset()
        results.clear()


def test_temps_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path):
    dead = tmp_path / ".tmp-999999999-abc"
    dead.mkdir()
    (dead / ".tmpXYZ").write_bytes(b"\0" * 1000)
    live = tmp_path / f".tmp-{os.getpid()}-live"
    live.mkdir()
    old_anon = tmp_path / ".tmp-old.safetensors"
    old_anon.write_bytes(b"")
    os.utime(old_anon, (1, 1))
    fresh_anon = tmp_path / ".tmpQWERTY"
    fresh_anon.write_bytes(b"")
    removed = clean_stale_temps(str(tmp_path))
    assert sorted(removed) == sorted([dead.name, old_anon.name])
    assert live.exists() and fresh_anon.exists()


def test_saving_onto_a_folder_or_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    for overwrite in (True, False):
        with pytest.raises(LitError, match="is a folder"):
            save_tensors_atomic(_t(1), str(tmp_path / "d.safetensors"), overwrite=overwrite)
    (tmp_path / "f").write_text("x")
    with pytest.raises(LitError, match="is a file"):
        save_tensors_atomic(_t(1), str(tmp_path / "f" / "x.safetensors"))
    with pytest.raises(LitError, match="bytes"):
        save_tensors_atomic(_t(1), str(tmp_path / ("a" * 300 + ".safetensors")))


@pytest.mark.parametrize("raw,expected", [
    ("my adapter", "my adapter.safetensors"),
    ("Modèle_猫", "Modèle_猫.safetensors"),
    ("sub/name.safetensors", "sub/name.safetensors"),
    ("..hidden", "hidden.safetensors"),
    ("a<b>:c", "a_b__c.safetensors"),
])
def test_safe_names_keep_unicode_and_never_hide(raw, expected):
    assert safe_relative_name(raw) == expected


@pytest.mark.parametrize("raw,match", [
    (".safetensors", "not a usable"), ("....", "not a usable"), ("", "not a usable"), ("   ", "not a usable"),
    ("../escape", r"leaves the model folder"), ("/etc/passwd", "absolute"), ("é" * 200, "too long"),
])
def test_unusable_names_are_refused(raw, match):
    with pytest.raises(LitError, match=match) as err:
        safe_relative_name(raw)
    assert err.value.input_name == "filename" and err.value.fix
