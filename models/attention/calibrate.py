"""Measured ``auto``: our kernel runs on a shape class only after it was timed faster than SDPA there and checked.

A *shape class* is what decides which implementation is faster: the GPU (name and compute capability), the dtype,
the head dim, the query and key lengths rounded up to a power of two, the mask kind (none / causal / padding /
bias, or a combination) and whether the call needs a backward (forward, or forward+backward).

On the first call of a class on a GPU, :func:`measure` runs the call once through the kernel, through SDPA in the
input dtype and through SDPA in fp32 (the reference); the kernel is *wrong* for the class when its error against
the reference is above the dtype's tolerance and above 4x SDPA's own error, or not finite. Then it times both a
few times, interleaved, with CUDA events (warm: the first run compiled and autotuned the kernel). :func:`policy`
keeps the kernel only when it is right and faster than SDPA by a margin (timing noise must not make us slower),
so a class the pack has seen is never slower than SDPA by construction. A kernel that raises disables the class.

Decisions live in a :class:`Calibrator`: in memory, and in ``attention-calibration.json`` in the pack's cache
folder (``$COMFYUI_LIT_CACHE``, else ``~/.cache/comfyui_lit``), keyed by the torch, triton and pack versions
(the pack version includes a hash of the kernel source, so an edited kernel is measured again). The file is
written atomically (temporary name, fsync, rename); a corrupted file is measured again and rewritten; a folder
that cannot be written keeps the decisions in memory, said once.

There is no module state but the calibrators keyed by their cache file (:func:`calibrator`); each serialises its
own bookkeeping with a lock, and a class being measured by one thread is served by SDPA in the others.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT = 1
CACHE_FILE = "attention-calibration.json"
CACHE_ENV = "COMFYUI_LIT_CACHE"  # the same folder as the towers' converted weights (models/towers/image_tower.py)
DEFAULT_REPS = 5
# the kernel must beat SDPA by this fraction: a tie within timing noise goes to SDPA
DEFAULT_MARGIN = 0.03
# max |error| against an fp32 SDPA reference, relative to max(1, largest reference entry)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
MODES = ("fwd", "fwd+bwd")

Timer = Callable[[dict[str, Callable[[], Any]], int], dict[str, list[float]]]


class KernelFailed(RuntimeError):
    """The kernel raised while being measured (the cause is chained)."""


# ------------------------------------------------------------------------------------------------ shape classes


@dataclasses.dataclass(frozen=True)
class ShapeClass:
    device: str
    dtype: str
    head_dim: int
    n_q: int
    n_k: int
    mask: str
    mode: str

    @property
    def key(self) -> str:
        return f"{self.device}|{self.dtype}|d{self.head_dim}|q{self.n_q}|k{self.n_k}|{self.mask}|{self.mode}"


def seq_bucket(n: int) -> int:
    """Sequence lengths share a class up to the next power of two (at least 16): 77 -> 128, 257 -> 512."""
    return max(16, 1 << max(0, int(n) - 1).bit_length())


def mask_kind(causal: bool, key_padding_mask: torch.Tensor | None, attn_bias: torch.Tensor | None) -> str:
    parts = [name for name, on in (("causal", causal), ("padding", key_padding_mask is not None),
                                   ("bias", attn_bias is not None)) if on]
    return "+".join(parts) or "none"


def device_label(device: torch.device) -> str:
    """``"NVIDIA H200 (sm_90)"``; AMD: the gfx architecture. CPU devices are labelled but never calibrated."""
    if device.type != "cuda":
        return device.type
    return _cuda_label(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_label(index: int) -> str:
    # every auto call on a GPU asks: cached per device index, so the lookup costs what a dict lookup does
    props = torch.cuda.get_device_properties(index)
    arch = getattr(props, "gcnArchName", None) if torch.version.hip else None
    return f"{props.name} ({arch or f'sm_{props.major}{props.minor}'})"


def shape_class(q: torch.Tensor, k: torch.Tensor, *, causal: bool, key_padding_mask: torch.Tensor | None,
                attn_bias: torch.Tensor | None, backward: bool, device: str | None = None) -> ShapeClass:
    """The class of a call on ``[B, H, N, d]`` views."""
    return ShapeClass(device=device if device is not None else device_label(q.device),
                      dtype=_DTYPE_NAMES.get(q.dtype, str(q.dtype)), head_dim=int(q.shape[-1]),
                      n_q=seq_bucket(q.shape[2]), n_k=seq_bucket(k.shape[2]),
                      mask=mask_kind(causal, key_padding_mask, attn_bias), mode=MODES[int(bool(backward))])


# ---------------------------------------------------------------------------------------------------- decisions


@dataclasses.dataclass
class Measurement:
    kernel_ms: float
    sdpa_ms: float
    max_err: float  # the kernel's worst relative error over the checked tensors
    allowed_err: float  # what that tensor was allowed
    worst: str = "out"  # which tensor (out, dq, dk, dv, dbias)


@dataclasses.dataclass
class Decision:
    use_kernel: bool
    status: str  # faster | slower | wrong | error | unmeasured
    kernel_ms: float | None = None
    sdpa_ms: float | None = None
    max_err: float | None = None
    allowed_err: float | None = None
    detail: str = ""
    when: str = ""

    @property
    def ratio(self) -> float | None:
        """Speed of what ``auto`` runs relative to SDPA (>= 1 whenever both were timed)."""
        if not self.kernel_ms or not self.sdpa_ms:
            return None
        return self.sdpa_ms / (self.kernel_ms if self.use_kernel else self.sdpa_ms)

    @property
    def persistent(self) -> bool:
        return self.status in ("faster", "slower", "wrong", "error")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Decision | None:
        if not isinstance(data, dict):
            return None
        try:
            d = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
        except TypeError:
            return None
        if not isinstance(d.use_kernel, bool) or d.status not in ("faster", "slower", "wrong", "error"):
            return None
        return d


def policy(m: Measurement, margin: float = DEFAULT_MARGIN) -> Decision:
    """Right and faster by ``margin`` -> kernel; right and not faster -> SDPA; wrong -> SDPA, disabled."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    common = dict(kernel_ms=m.kernel_ms, sdpa_ms=m.sdpa_ms, max_err=m.max_err, allowed_err=m.allowed_err, when=stamp)
    if not math.isfinite(m.max_err) or m.max_err > m.allowed_err:
        return Decision(False, "wrong", detail=f"{m.worst} error {m.max_err:.3g} > allowed {m.allowed_err:.3g}",
                        **common)
    valid = all(math.isfinite(t) and t > 0 for t in (m.kernel_ms, m.sdpa_ms))
    if valid and m.kernel_ms * (1.0 + margin) < m.sdpa_ms:
        return Decision(True, "faster", **common)
    return Decision(False, "slower", **common)


# ------------------------------------------------------------------------------------------------- measurement


def cuda_event_timer(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, ``reps`` samples each, interleaved so drift hits all alike."""
    for fn in fns.values():  # warm: allocator, cuDNN plans
        fn()
    torch.cuda.synchronize()
    events: dict[str, list] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    return {name: [s.elapsed_time(e) for s, e in pairs] for name, pairs in events.items()}


def wall_clock_timer(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Milliseconds by the wall clock: for CPU dry runs under the interpreter (meaningless as speed)."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - start) * 1e3)
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max(1, max |ref|) over the entries where the reference is finite; inf if got is not."""
    finite = torch.isfinite(ref)
    if not bool(torch.isfinite(got.float())[finite].all()):
        return float("inf")
    diff = (got.float() - ref).abs()[finite]
    if diff.numel() == 0:
        return 0.0
    return diff.max().item() / max(1.0, ref.abs()[finite].max().item())


def measure(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None, *,
            run_kernel: Callable, run_sdpa: Callable, backward: bool, timer: Timer, reps: int) -> Measurement:
    """Check and time one call. ``run_*(q, k, v, bias)`` compute it on ``[B, H, N, d]`` views with the call's
    masks; kernel exceptions come out as :class:`KernelFailed`, anything else (e.g. SDPA out of memory) as is."""
    tol = TOLERANCE.get(q.dtype, 1e-4)
    grad_bias = backward and attn_bias is not None and attn_bias.is_floating_point() and attn_bias.requires_grad

    def leaves(dtype=None):
        ts = [t.detach().to(dtype) if dtype else t.detach() for t in (q, k, v)]
        b = attn_bias
        if backward:
            ts = [t.clone().requires_grad_(True) for t in ts]
            if grad_bias:
                b = (b.detach().to(dtype) if dtype else b.detach()).clone().requires_grad_(True)
        return ts, b

    def kernel(*args):
        try:
            return run_kernel(*args)
        except Exception as err:  # noqa: BLE001 - any kernel failure disables the class
            raise KernelFailed(f"{type(err).__name__}: {err}") from err

    # the upstream gradient comes from a private generator: calibrating must not move the caller's RNG stream
    gen = torch.Generator(device=q.device).manual_seed(0)
    grad_out = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=gen, device=q.device, dtype=q.dtype) \
        if backward else None

    def run(fn, dtype=None):
        ts, b = leaves(dtype)
        if not backward:
            with torch.no_grad():
                return [fn(*ts, b)], ts, b
        out = fn(*ts, b)
        inputs = ts + ([b] if grad_bias else [])
        go = grad_out.to(out.dtype)
        return [out, *torch.autograd.grad(out, inputs, go)], ts, b

    ref, _, _ = run(run_sdpa, torch.float32)
    got, kts, kb = run(kernel)
    sdpa, sts, sb = run(run_sdpa)
    names = ["out", "dq", "dk", "dv", "dbias"]
    worst = (0.0, tol, "out")
    for name, r, a, s in zip(names, ref, got, sdpa, strict=False):
        err = _rel_err(a, r)
        allowed = max(tol, 4.0 * _rel_err(s, r))
        if (err / allowed if math.isfinite(err) else math.inf) >= worst[0] / worst[1]:
            worst = (err, allowed, name)
    del ref, got, sdpa

    def timed(fn, ts, b):
        if not backward:
            def call():
                with torch.no_grad():
                    return fn(*ts, b)
            return call
        inputs = ts + ([b] if grad_bias else [])

        def call_bwd():
            out = fn(*ts, b)
            return torch.autograd.grad(out, inputs, grad_out.to(out.dtype))
        return call_bwd

    times = timer({"triton": timed(kernel, kts, kb), "sdpa": timed(run_sdpa, sts, sb)}, reps)
    return Measurement(kernel_ms=_median(times["triton"]), sdpa_ms=_median(times["sdpa"]), max_err=worst[0],
                       allowed_err=worst[1], worst=worst[2])


# ---------------------------------------------------------------------------------------------------- the cache


def _pack_version() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    version = "unknown"
    try:
        with open(os.path.join(root, "pyproject.toml"), encoding="utf-8") as fh:
            found = re.search(r'^version\s*=\s*"([^"]+)"', fh.read(), re.MULTILINE)
        version = found.group(1) if found else version
    except OSError:
        pass
    # the kernel's own source: an edited kernel is a different kernel, whatever the version says
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_kernel.py"), "rb") as fh:
            version += "+k" + hashlib.sha256(fh.read()).hexdigest()[:12]
    except OSError:
        pass
    return version


def versions() -> dict[str, str]:
    """What a cached decision is valid for."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - no triton: nothing is ever calibrated, the key is still well defined
        triton_version = "none"
    return {"torch": torch.__version__, "triton": triton_version, "pack": _pack_version()}


def default_cache_path() -> str:
    folder = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "comfyui_lit"))
    return os.path.join(folder, CACHE_FILE)


def _write_json_atomic(data: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class Calibrator:
    """Decisions per shape class, in memory and (when ``path`` is given and writable) on disk."""

    def __init__(self, path: str | None, *, versions_: dict[str, str] | None = None, timer: Timer | None = None,
                 reps: int = DEFAULT_REPS, margin: float = DEFAULT_MARGIN) -> None:
        self.path = path
        self.versions = dict(versions_) if versions_ is not None else versions()
        self.timer: Timer = timer or cuda_event_timer
        self.reps = reps
        self.margin = margin
        self._lock = threading.Lock()
        self._decisions: dict[str, Decision] = {}
        self._pending: set[str] = set()
        self._loaded = path is None
        self._writable = path is not None
        self._said: set[str] = set()
        self._said_lock = threading.Lock()  # _say_once runs with and without _lock held

    # -- disk
    def _say_once(self, what: str, level: int, message: str, *args: Any) -> None:
        with self._said_lock:
            if what in self._said:
                return
            self._said.add(what)
        log.log(level, message, *args)

    def _read(self) -> dict[str, Decision]:
        """The file's valid decisions for our versions; {} when absent, stale or corrupted (then said once)."""
        assert self.path is not None
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError) as err:
            self._say_once("corrupt", logging.WARNING, "LiT attention calibration file %s is unreadable (%s); "
                           "measuring again and rewriting it.", self.path, err)
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("decisions"), dict):
            self._say_once("corrupt", logging.WARNING, "LiT attention calibration file %s is not in the expected "
                           "format; measuring again and rewriting it.", self.path)
            return {}
        if data.get("versions") != self.versions:
            self._say_once("stale", logging.INFO, "LiT attention calibration in %s was made for %s, this is %s: "
                           "measuring again.", self.path, data.get("versions"), self.versions)
            return {}
        out = {}
        for key, entry in data["decisions"].items():
            decision = Decision.from_json(entry)
            if decision is not None:
                out[str(key)] = decision
        return out

    def _load_locked(self) -> None:
        if not self._loaded:
            self._loaded = True
            for key, decision in self._read().items():
                self._decisions.setdefault(key, decision)

    def _save_locked(self) -> None:
        if not self._writable or self.path is None:
            return
        merged = self._read()  # another process may have added classes since we loaded
        merged.update({k: d for k, d in self._decisions.items() if d.persistent})
        data = {"format": FORMAT, "versions": self.versions,
                "decisions": {k: d.to_json() for k, d in sorted(merged.items())}}
        try:
            _write_json_atomic(data, self.path)
        except OSError as err:
            self._writable = False
            self._say_once("unwritable", logging.WARNING, "LiT attention calibration cannot be saved to %s (%s); "
                           "keeping it in memory for this session only.", self.path, err)

    # -- decisions
    def lookup(self, cls: ShapeClass) -> Decision | None:
        with self._lock:
            self._load_locked()
            return self._decisions.get(cls.key)

    def decisions(self) -> dict[str, Decision]:
        with self._lock:
            self._load_locked()
            return dict(self._decisions)

    def forget(self) -> None:
        """Drop every decision (memory and file) so the next calls measure again."""
        with self._lock:
            self._decisions.clear()
            self._loaded = True
            if self._writable and self.path is not None:
                try:
                    _write_json_atomic({"format": FORMAT, "versions": self.versions, "decisions": {}}, self.path)
                except OSError as err:
                    self._writable = False
                    self._say_once("unwritable", logging.WARNING, "LiT attention calibration cannot be saved to "
                                   "%s (%s); keeping it in memory for this session only.", self.path, err)

    def _store(self, cls: ShapeClass, decision: Decision) -> None:
        with self._lock:
            self._decisions[cls.key] = decision
            if decision.persistent:
                self._save_locked()

    def decide(self, cls: ShapeClass, measure_fn: Callable[[], Measurement]) -> Decision:
        """The class's decision, measuring it (once, in one thread) if it has none yet."""
        with self._lock:
            self._load_locked()
            known = self._decisions.get(cls.key)
            if known is not None:
                return known
            if cls.key in self._pending:  # another thread measures it right now: SDPA meanwhile
                return Decision(False, "unmeasured", detail="being measured")
            self._pending.add(cls.key)
        try:
            try:
                decision = policy(measure_fn(), self.margin)
            except KernelFailed as err:
                transient = isinstance(err.__cause__, torch.cuda.OutOfMemoryError)
                decision = Decision(False, "unmeasured" if transient else "error", detail=str(err),
                                    when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                log.warning("LiT Triton attention failed on %s (%s); PyTorch SDPA serves it%s.", cls.key, err,
                            " for now" if transient else " from now on")
            except Exception as err:  # noqa: BLE001 - the reference or SDPA could not run: no verdict on the kernel
                decision = Decision(False, "unmeasured", detail=f"{type(err).__name__}: {err}")
                self._say_once("unmeasured:" + type(err).__name__, logging.WARNING,
                               "LiT attention could not calibrate %s (%s: %s); using PyTorch SDPA for it.",
                               cls.key, type(err).__name__, err)
            else:
                if decision.status == "wrong":
                    log.warning("LiT Triton attention gave a wrong result on %s (%s); disabled there, PyTorch "
                                "SDPA serves it.", cls.key, decision.detail)
                else:
                    log.info("LiT attention calibrated %s: %s (kernel %.3f ms, SDPA %.3f ms).", cls.key,
                             "kernel" if decision.use_kernel else "SDPA", decision.kernel_ms, decision.sdpa_ms)
            self._store(cls, decision)
            return decision
        finally:
            with self._lock:
                self._pending.discard(cls.key)

    def record_failure(self, cls: ShapeClass, err: BaseException) -> None:
        """The kernel raised on a class it was chosen for: SDPA from now on (one logged line)."""
        transient = isinstance(err, torch.cuda.OutOfMemoryError)
        decision = Decision(False, "unmeasured" if transient else "error", detail=f"{type(err).__name__}: {err}",
                            when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        log.warning("LiT Triton attention failed on %s (%s: %s); using PyTorch SDPA for it%s.", cls.key,
                    type(err).__name__, err, " for now" if transient else " from now on")
        self._store(cls, decision)


_CALIBRATORS: dict[str, Calibrator] = {}
_CALIBRATORS_LOCK = threading.Lock()


def calibrator(path: str | None = None) -> Calibrator:
    """The calibrator of a cache file (default: the pack's cache folder), one per file per process."""
    path = os.path.abspath(path or default_cache_path())
    with _CALIBRATORS_LOCK:
        found = _CALIBRATORS.get(path)
        if found is None:
            found = _CALIBRATORS[path] = Calibrator(path)
        return found


# ------------------------------------------------------------------------------------------------ the full table

# label, batch, heads, tokens (queries = keys), head dim, mask kind. What the pack's towers and ComfyUI's models
# run: the calibration CLI measures each in every dtype and mode; ``auto`` measures the same classes lazily.
TABLE = [
    ("minilm text 64", 64, 12, 64, 32, "padding"),
    ("clip text 77 (transformers)", 64, 12, 77, 64, "causal"),
    ("clip text 77 (ComfyUI additive mask)", 64, 12, 77, 64, "bias"),
    ("vit-b/16 197", 32, 12, 197, 64, "none"),
    ("clip-L/14 257", 32, 16, 257, 64, "none"),
    ("vit-H/14 257 (d80)", 32, 16, 257, 80, "none"),
    ("clip-L/14@336 577", 16, 16, 577, 64, "none"),
    ("siglip so400m 729 (d72)", 16, 16, 729, 72, "none"),
    ("dinov2-L 1025", 8, 16, 1025, 64, "none"),
    ("bert 128 (d96)", 32, 8, 128, 96, "padding"),
    ("unet 4096 (d64)", 2, 10, 4096, 64, "none"),
    ("dit 4096 (d128)", 2, 24, 4096, 128, "none"),
]


def table_inputs(b: int, h: int, n: int, d: int, mask: str, *, device: torch.device, dtype: torch.dtype,
                 seed: int = 0) -> dict[str, Any]:
    """Random ``[B, H, N, d]`` inputs and masks of a table row, as ``attention``'s keyword arguments."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, device=device, dtype=dtype) for _ in range(3))
    kpm = bias = None
    if "padding" in mask:
        lengths = torch.randint(n // 2, n + 1, (b,), generator=gen, device=device)
        kpm = torch.arange(n, device=device)[None, :] < lengths[:, None]
    if "bias" in mask:  # ComfyUI's CLIP: a causal additive mask with the dtype's most negative value
        bias = torch.full((n, n), torch.finfo(dtype).min, device=device, dtype=dtype).triu_(1)[None, None]
    return {"q": q, "k": k, "v": v, "causal": "causal" in mask, "key_padding_mask": kpm, "attn_bias": bias}


def format_rows(rows: list[tuple[str, Decision]]) -> list[str]:
    """The calibration table as Markdown lines (bench/README.md documents the columns)."""
    lines = ["| class | kernel ms | sdpa ms | auto runs | ratio vs sdpa | max err (allowed) | status |",
             "|---|---|---|---|---|---|---|"]

    def ms(x: float | None) -> str:
        return f"{x:.3f}" if x is not None and math.isfinite(x) else "-"

    for key, d in rows:
        ratio = d.ratio
        err = f"{d.max_err:.1e} ({d.allowed_err:.0e})" if d.max_err is not None and d.allowed_err else "-"
        status = d.status + (f": {d.detail}" if d.detail and d.status in ("wrong", "error", "unmeasured") else "")
        lines.append(f"| {key} | {ms(d.kernel_ms)} | {ms(d.sdpa_ms)} | {'kernel' if d.use_kernel else 'sdpa'} | "
                     f"{f'{ratio:.2f}x' if ratio else '-'} | {err} | {status} |")
    return lines
