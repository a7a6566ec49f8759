"""Measured ``auto``: the policy, the on-disk cache, its invalidation and the fallbacks, with injected timings.

No GPU here: timings are injected through the calibrator's ``timer`` and the dispatch is told that the CPU (running
the real kernel under ``TRITON_INTERPRET=1``) is a device ``auto`` calibrates on, so the same code paths run.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import json  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from comfyui_lit.models.attention import calibrate as cal  # noqa: E402
from comfyui_lit.models.attention import dispatch as attn_mod  # noqa: E402
from comfyui_lit.models.attention import triton_kernel as ta  # noqa: E402
from comfyui_lit.models.attention.dispatch import attention  # noqa: E402

needs_triton = pytest.mark.skipif(not ta.TRITON_AVAILABLE, reason="triton is a declared dependency of this test")
VERSIONS = {"torch": "2.13.0", "triton": "3.9.0", "pack": "0.1.0+kabc"}
CLASS = cal.ShapeClass("Fake GPU (sm_90)", "bf16", 72, 1024, 1024, "none", "fwd")
LOGGER = "comfyui_lit.models.attention.calibrate"


def m(kernel_ms=1.0, sdpa_ms=2.0, err=1e-3, allowed=3e-2):
    return cal.Measurement(kernel_ms=kernel_ms, sdpa_ms=sdpa_ms, max_err=err, allowed_err=allowed)


def counting(measurement):
    calls = []

    def measure():
        calls.append(1)
        if isinstance(measurement, BaseException):
            raise measurement
        return measurement

    return measure, calls


# ------------------------------------------------------------------------------------------------------ policy


def test_faster_right_kernel_wins():
    d = cal.policy(m(1.0, 2.0))
    assert d.use_kernel and d.status == "faster" and d.ratio == pytest.approx(2.0)


def test_slower_or_tied_kernel_loses():
    assert not cal.policy(m(2.0, 1.0)).use_kernel
    tie = cal.policy(m(0.99, 1.0))  # 1% faster is within timing noise: SDPA keeps it
    assert not tie.use_kernel and tie.status == "slower" and tie.ratio == 1.0
    assert cal.policy(m(0.99, 1.0), margin=0.0).use_kernel


def test_never_slower_than_sdpa_over_a_grid_of_timings():
    for k in (0.1, 0.5, 0.97, 1.0, 1.02, 3.0):
        for s in (0.1, 0.5, 1.0, 2.0):
            d = cal.policy(m(k, s))
            chosen = d.kernel_ms if d.use_kernel else d.sdpa_ms
            assert chosen <= s and d.ratio >= 1.0


def test_wrong_kernel_is_disabled_even_when_faster():
    d = cal.policy(m(0.1, 2.0, err=0.5, allowed=0.03))
    assert not d.use_kernel and d.status == "wrong" and "0.5" in d.detail
    assert cal.policy(m(0.1, 2.0, err=float("inf"))).status == "wrong"
    assert cal.policy(m(0.1, 2.0, err=float("nan"))).status == "wrong"
    assert not cal.policy(m(float("nan"), 2.0)).use_kernel  # an untimed kernel never wins


def test_shape_classes():
    q = torch.zeros(2, 4, 77, 72)
    k = torch.zeros(2, 4, 257, 72)
    c = cal.shape_class(q, k, causal=True, key_padding_mask=torch.ones(2, 257, dtype=torch.bool), attn_bias=None,
                        backward=True, device="X (sm_86)")
    assert (c.n_q, c.n_k, c.mask, c.mode, c.head_dim, c.dtype) == (128, 512, "causal+padding", "fwd+bwd", 72, "fp32")
    assert c.key == "X (sm_86)|fp32|d72|q128|k512|causal+padding|fwd+bwd"
    assert [cal.seq_bucket(n) for n in (1, 16, 17, 64, 65, 1025)] == [16, 16, 32, 64, 128, 2048]
    assert cal.mask_kind(False, None, torch.zeros(1)) == "bias" and cal.mask_kind(False, None, None) == "none"
    assert cal.device_label(torch.device("cpu")) == "cpu"


# ------------------------------------------------------------------------------------------------------- cache


def test_decision_is_cached_on_disk_and_reused(tmp_path):
    path = tmp_path / "cache" / cal.CACHE_FILE
    first = cal.Calibrator(str(path), versions_=VERSIONS)
    measure, calls = counting(m(1.0, 2.0))
    assert first.decide(CLASS, measure).use_kernel
    assert first.decide(CLASS, measure).use_kernel
    assert calls == [1]  # measured once per class
    data = json.loads(path.read_text())
    assert data["versions"] == VERSIONS and data["format"] == cal.FORMAT
    assert data["decisions"][CLASS.key]["status"] == "faster"
    assert not [p for p in os.listdir(path.parent) if p.startswith(".tmp-")]  # atomic write left no temp file
    again = cal.Calibrator(str(path), versions_=VERSIONS)  # a new session: a hit, nothing measured
    measure2, calls2 = counting(m(5.0, 1.0))
    assert again.decide(CLASS, measure2).use_kernel and not calls2
    other = cal.ShapeClass(**{**CLASS.__dict__, "mode": "fwd+bwd"})  # another class is measured on its own
    assert not again.decide(other, measure2).use_kernel and calls2 == [1]
    assert set(json.loads(path.read_text())["decisions"]) == {CLASS.key, other.key}


@pytest.mark.parametrize("changed", ["torch", "triton", "pack"])
def test_version_change_invalidates(tmp_path, changed, caplog):
    path = str(tmp_path / cal.CACHE_FILE)
    cal.Calibrator(path, versions_=VERSIONS).decide(CLASS, counting(m(1.0, 2.0))[0])
    newer = cal.Calibrator(path, versions_={**VERSIONS, changed: "9.9"})
    measure, calls = counting(m(2.0, 1.0))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert not newer.decide(CLASS, measure).use_kernel
    assert calls == [1] and "measuring again" in caplog.text
    data = json.loads(open(path).read())
    assert data["versions"][changed] == "9.9" and data["decisions"][CLASS.key]["status"] == "slower"


def test_pack_version_follows_the_kernel_source():
    v = cal.versions()
    assert v["torch"] == torch.__version__ and "+k" in v["pack"] and v["pack"].startswith("0.")


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '{"format": 1, "versions": {}, "decisions": 3}',
                                     "\x00\xff"])
def test_corrupted_cache_file_is_measured_again_and_rewritten(tmp_path, garbage, caplog):
    path = tmp_path / cal.CACHE_FILE
    path.write_bytes(garbage.encode("latin-1"))
    c = cal.Calibrator(str(path), versions_=VERSIONS)
    measure, calls = counting(m(1.0, 2.0))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert c.decide(CLASS, measure).use_kernel
    assert calls == [1]
    assert "measuring again" in caplog.text
    assert json.loads(path.read_text())["decisions"][CLASS.key]["use_kernel"] is True


def test_malformed_entry_is_measured_again(tmp_path):
    path = tmp_path / cal.CACHE_FILE
    path.write_text(json.dumps({"format": cal.FORMAT, "versions": VERSIONS,
                                "decisions": {CLASS.key: {"use_kernel": "yes", "status": "faster"}}}))
    measure, calls = counting(m(2.0, 1.0))
    assert not cal.Calibrator(str(path), versions_=VERSIONS).decide(CLASS, measure).use_kernel and calls == [1]


def test_unwritable_cache_dir_keeps_decisions_in_memory_said_once(tmp_path, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    c = cal.Calibrator(str(blocker / cal.CACHE_FILE), versions_=VERSIONS)
    other = cal.ShapeClass(**{**CLASS.__dict__, "head_dim": 80})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert c.decide(CLASS, counting(m(1.0, 2.0))[0]).use_kernel
        assert not c.decide(other, counting(m(2.0, 1.0))[0]).use_kernel
    said = [r for r in caplog.records if "memory" in r.getMessage()]
    assert len(said) == 1
    measure, calls = counting(m(5.0, 1.0))
    assert c.decide(CLASS, measure).use_kernel and not calls  # still remembered for the session


def test_forget_measures_again(tmp_path):
    path = str(tmp_path / cal.CACHE_FILE)
    c = cal.Calibrator(path, versions_=VERSIONS)
    c.decide(CLASS, counting(m(1.0, 2.0))[0])
    c.forget()
    assert json.loads(open(path).read())["decisions"] == {}
    measure, calls = counting(m(2.0, 1.0))
    assert not c.decide(CLASS, measure).use_kernel and calls == [1]


def test_two_processes_merge_their_classes(tmp_path):
    path = str(tmp_path / cal.CACHE_FILE)
    a = cal.Calibrator(path, versions_=VERSIONS)
    b = cal.Calibrator(path, versions_=VERSIONS)
    other = cal.ShapeClass(**{**CLASS.__dict__, "dtype": "fp16"})
    a.decide(CLASS, counting(m(1.0, 2.0))[0])
    b.decide(other, counting(m(2.0, 1.0))[0])  # b loaded nothing of a's before; its write keeps a's class
    assert set(json.loads(open(path).read())["decisions"]) == {CLASS.key, other.key}


def test_keyed_calibrators(tmp_path):
    one = cal.calibrator(str(tmp_path / "a.json"))
    assert cal.calibrator(str(tmp_path / "a.json")) is one
    assert cal.calibrator(str(tmp_path / "b.json")) is not one


def test_one_thread_measures_a_class_the_others_use_sdpa_meanwhile(tmp_path):
    c = cal.Calibrator(None, versions_=VERSIONS)
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_measure():
        calls.append(1)
        started.set()
        release.wait(10)
        return m(1.0, 2.0)

    results = []
    t = threading.Thread(target=lambda: results.append(c.decide(CLASS, slow_measure)))
    t.start()
    assert started.wait(10)
    meanwhile = c.decide(CLASS, slow_measure)
    release.set()
    t.join(10)
    assert calls == [1] and not meanwhile.use_kernel and meanwhile.status == "unmeasured"
    assert results[0].use_kernel and c.decide(CLASS, slow_measure).use_kernel


# --------------------------------------------------------------------------------------------------- fallbacks


def test_kernel_raising_while_measured_disables_the_class(tmp_path, caplog):
    path = str(tmp_path / cal.CACHE_FILE)
    c = cal.Calibrator(path, versions_=VERSIONS)
    failure = cal.KernelFailed("RuntimeError: no kernel image for this GPU")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        d = c.decide(CLASS, counting(failure)[0])
    assert not d.use_kernel and d.status == "error"
    assert len([r for r in caplog.records if CLASS.key in r.getMessage()]) == 1
    assert json.loads(open(path).read())["decisions"][CLASS.key]["status"] == "error"  # not retried next session


def test_reference_failing_gives_sdpa_without_a_verdict(tmp_path):
    c = cal.Calibrator(str(tmp_path / cal.CACHE_FILE), versions_=VERSIONS)
    d = c.decide(CLASS, counting(MemoryError("reference did not fit"))[0])
    assert not d.use_kernel and d.status == "unmeasured"
    assert not os.path.exists(tmp_path / cal.CACHE_FILE)  # nothing learnt about the kernel: nothing persisted


# ------------------------------------------------------------------------------------ the dispatch, end to end


def timer_giving(kernel_ms, sdpa_ms, runs=None):
    def timer(fns, reps):
        for fn in fns.values():  # the timed closures must work (forward+backward included)
            fn()
        if runs is not None:
            runs.append(sorted(fns))
        return {"triton": [kernel_ms] * reps, "sdpa": [sdpa_ms] * reps}

    return timer


@pytest.fixture
def gpu_like(monkeypatch, tmp_path):
    """auto on the CPU behaves as on a GPU, with a calibrator of our own (fresh file, injected timer)."""
    monkeypatch.delenv(attn_mod.ENV_VAR, raising=False)
    monkeypatch.setattr(attn_mod, "_auto_calibrates", lambda q: True)
    holder = {}

    def use(kernel_ms, sdpa_ms, runs=None):
        holder["c"] = cal.Calibrator(str(tmp_path / cal.CACHE_FILE), versions_=VERSIONS,
                                     timer=timer_giving(kernel_ms, sdpa_ms, runs), reps=1)
        monkeypatch.setattr(attn_mod, "_calibrator", lambda: holder["c"])
        return holder["c"]

    return use


def _spy(monkeypatch, transform=None):
    calls = []
    real = ta.triton_attention

    def spy(*a, **kw):
        calls.append(1)
        out = real(*a, **kw)
        return transform(out) if transform else out

    monkeypatch.setattr(ta, "triton_attention", spy)
    return calls


def qkv(n=13, d=32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, n, d, generator=g).requires_grad_(grad) for _ in range(3)]


@needs_triton
def test_auto_uses_the_kernel_where_it_was_measured_faster(gpu_like, monkeypatch):
    runs = []
    c = gpu_like(1.0, 2.0, runs)
    calls = _spy(monkeypatch)
    q, k, v = qkv()
    out = attention(q, k, v, causal=True)
    assert runs == [["sdpa", "triton"]] and calls  # measured (kernel checked + timed), then used
    n = len(calls)
    out2 = attention(q, k, v, causal=True)
    assert runs == [["sdpa", "triton"]] and len(calls) == n + 1  # decided: no second measurement
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (out - want).abs().max() < 1e-4 and torch.equal(out, out2)
    (decision,) = c.decisions().values()
    assert decision.use_kernel and decision.max_err < 1e-4 and decision.kernel_ms == 1.0


@needs_triton
def test_auto_keeps_sdpa_where_the_kernel_was_slower(gpu_like, monkeypatch):
    gpu_like(2.0, 1.0)
    q, k, v = qkv()
    attention(q, k, v)
    calls = _spy(monkeypatch)
    out = attention(q, k, v)
    assert not calls and torch.allclose(out, F.scaled_dot_product_attention(q, k, v))


@needs_triton
def test_wrong_kernel_is_disabled_with_one_logged_line(gpu_like, monkeypatch, caplog):
    c = gpu_like(0.1, 2.0)  # "faster", but wrong: must not be used
    calls = _spy(monkeypatch, transform=lambda out: out + 0.5)
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = attention(q, k, v)
        attention(q, k, v)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v))  # the answer is SDPA's
    assert len([r for r in caplog.records if "wrong result" in r.getMessage()]) == 1
    n = len(calls)
    attention(q, k, v)
    assert len(calls) == n  # disabled: the kernel is not even called
    (decision,) = c.decisions().values()
    assert decision.status == "wrong" and decision.max_err > 0.1


@needs_triton
def test_kernel_raising_in_calibration_falls_back_to_sdpa(gpu_like, monkeypatch, caplog):
    gpu_like(0.1, 2.0)
    tries = []

    def broken(*a, **kw):
        tries.append(1)
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(ta, "triton_attention", broken)
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
        assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert tries == [1] and "SDPA" in caplog.text
    with pytest.raises(RuntimeError):
        attention(q, k, v, backend="triton")  # forced: the failure is not hidden


@needs_triton
def test_kernel_raising_after_it_was_chosen_falls_back_and_disables(gpu_like, monkeypatch, caplog):
    c = gpu_like(1.0, 2.0)
    q, k, v = qkv()
    attention(q, k, v)  # measured: kernel
    tries = []

    def broken(*a, **kw):
        tries.append(1)
        raise RuntimeError("device-side assert")

    monkeypatch.setattr(ta, "triton_attention", broken)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
        attention(q, k, v)
    assert tries == [1] and "from now on" in caplog.text
    (decision,) = c.decisions().values()
    assert decision.status == "error" and not decision.use_kernel


@needs_triton
def test_forward_and_backward_are_separate_classes_and_backward_is_checked(gpu_like, monkeypatch):
    c = gpu_like(1.0, 2.0)
    q, k, v = qkv(grad=True)
    bias = torch.randn(1, 2, 13, 13, requires_grad=True)
    out = attention(q, k, v, attn_bias=bias)
    grads = torch.autograd.grad(out.sum(), [q, k, v, bias])
    with torch.no_grad():
        attention(q, k, v, attn_bias=bias)
    modes = sorted(key.rsplit("|", 1)[1] for key in c.decisions())
    assert modes == ["fwd", "fwd+bwd"]
    assert all(d.use_kernel for d in c.decisions().values())
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    want = torch.autograd.grad(ref.sum(), [q, k, v, bias])
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(grads, want, strict=True))


@needs_triton
def test_wrong_gradients_disable_the_backward_class(gpu_like, monkeypatch):
    c = gpu_like(0.1, 2.0)

    class Scaled(torch.autograd.Function):  # right forward, gradients twice too large
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    _spy(monkeypatch, transform=Scaled.apply)
    q, k, v = qkv(grad=True)
    out = attention(q, k, v)
    (decision,) = c.decisions().values()
    assert decision.status == "wrong" and decision.detail.split()[0] in ("dq", "dk", "dv")
    want = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(torch.autograd.grad(out.sum(), q)[0], torch.autograd.grad(want.sum(), q)[0], atol=1e-5)


@needs_triton
def test_calibration_leaves_the_callers_rng_alone(gpu_like):
    gpu_like(1.0, 2.0)
    q, k, v = qkv(grad=True)
    torch.manual_seed(123)
    attention(q, k, v).sum().backward()  # measures forward+backward (which draws a random upstream gradient)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)


def test_auto_on_a_cpu_never_calibrates(monkeypatch):
    monkeypatch.delenv(attn_mod.ENV_VAR, raising=False)

    def no(*a, **kw):
        raise AssertionError("a CPU must not pay for calibration")

    monkeypatch.setattr(attn_mod, "_calibrator", no)
    q, k, v = qkv()
    assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@needs_triton
def test_env_var_still_forces_either_path(gpu_like, monkeypatch):
    runs = []
    gpu_like(1.0, 2.0, runs)
    calls = _spy(monkeypatch)
    q, k, v = qkv()
    monkeypatch.setenv(attn_mod.ENV_VAR, "torch")
    attention(q, k, v)
    assert not calls and not runs
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")
    attention(q, k, v)
    assert calls == [1] and not runs  # forced: no measurement either


@needs_triton
def test_real_measurement_on_the_interpreter():
    """The measurement itself (check + timing closures) with the real kernel, timed by the wall clock."""
    def wall(fns, reps):
        out = {}
        for name, fn in fns.items():
            out[name] = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                out[name].append((time.perf_counter() - t0) * 1e3)
        return out

    q, k, v = qkv(grad=True)
    kpm = torch.ones(1, 13, dtype=torch.bool)
    kpm[0, 9:] = False
    got = cal.measure(q, k, v, None, backward=True, timer=wall, reps=2,
                      run_kernel=lambda a, b, c, bias: attn_mod._run_kernel(a, b, c, True, kpm, bias, None),
                      run_sdpa=lambda a, b, c, bias: attn_mod._sdpa(a, b, c, True, kpm, bias, None))
    assert got.kernel_ms > 0 and got.sdpa_ms > 0
    assert got.max_err < 1e-4 <= got.allowed_err
    assert q.grad is None  # the caller's tensors are untouched


def test_cuda_event_timer_interleaves_and_reports_per_function(monkeypatch):
    """The GPU timer's bookkeeping, with CUDA events stood in by a clock (no GPU here)."""
    clock = iter(range(1000))
    order = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            self.t = next(clock)

        def elapsed_time(self, end):
            return float(end.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    fns = {"triton": lambda: order.append("t"), "sdpa": lambda: order.append("s")}
    times = cal.cuda_event_timer(fns, 3)
    assert order == ["t", "s"] + ["t", "s"] * 3  # one warm call each, then interleaved
    assert times == {"triton": [1.0] * 3, "sdpa": [1.0] * 3}


def test_device_label_names_gpu_and_architecture(monkeypatch):
    from types import SimpleNamespace

    cal._cuda_label.cache_clear()
    asked = []

    def props(index):
        asked.append(index)
        return SimpleNamespace(name="NVIDIA L4", major=8, minor=9, gcnArchName="gfx942")

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(torch.version, "hip", None)
    try:
        assert cal.device_label(torch.device("cuda", 1)) == "NVIDIA L4 (sm_89)"
        assert cal.device_label(torch.device("cuda", 1)) == "NVIDIA L4 (sm_89)" and asked == [1]  # cached
        cal._cuda_label.cache_clear()
        monkeypatch.setattr(torch.version, "hip", "6.2")
        assert cal.device_label(torch.device("cuda", 0)) == "NVIDIA L4 (gfx942)"
    finally:
        cal._cuda_label.cache_clear()


def test_nothing_is_measured_while_torch_compile_traces(gpu_like, monkeypatch):
    runs = []
    c = gpu_like(1.0, 2.0, runs)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v = qkv()
    assert torch.allclose(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert not runs and not c.decisions()


@needs_triton
def test_transformers_towers_go_through_the_calibration(gpu_like, monkeypatch):
    import copy

    from transformers import BertConfig, BertModel

    c = gpu_like(1.0, 2.0)
    name = attn_mod.register_transformers_attention()
    cfg = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    ref = BertModel._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    ours = BertModel._from_config(copy.deepcopy(cfg), attn_implementation=name).eval()
    ours.load_state_dict(ref.state_dict())
    calls = _spy(monkeypatch)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.inference_mode():
        a = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        b = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert calls and (a - b)[mask.bool()].abs().max() < 1e-4
    (key,) = c.decisions()
    # transformers hands the padded batch over as a [B, 1, N, N] boolean mask: a "bias" class, inference: "fwd"
    assert key.endswith("|fp32|d32|q16|k16|bias|fwd")
