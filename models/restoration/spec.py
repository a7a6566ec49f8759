"""The restoration feature's one spec: its tasks (names, operator kind, schedules per prior), the Degrade node's
damage in the same vocabulary, and every user parameter (default, range, tooltip). The node, the CLI, the engine
and the benchmark read this file, so a task or a default changed here changes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Schedule:
    """One task's sampler defaults: start/end noise levels (0..1 units; ``None`` end = the data noise), steps and
    the data weight ``lam``."""

    sigma_max: float
    sigma_min: float | None
    steps: int
    lam: float
    final_prox: bool  # end on the data step (noise-free data) rather than on the prior
    prox_first: bool = False  # start with a data step on the initial estimate (DPIR); else denoise it first


@dataclass(frozen=True)
class Task:
    """A restoration task: its operator ``kind`` and that operator's one fixed parameter (blur family, scale)."""

    kind: str
    param: str | int | None
    classical: Schedule  # with the built-in DCT prior
    trained: Schedule  # with a trained network (DPIR's schedules)
    block_matching: bool = False  # one-shot tasks can afford the classical prior's grouped (BM3D) steps


_DPIR_START = 49 / 255


@dataclass(frozen=True)
class GroupedPass:
    """One grouped (BM3D-style) pass of the classical prior: ``patch`` px square patches, the ``group`` most similar
    (a power of two, for the Haar transform along the group) within +-``search`` px of every ``stride``-th
    reference patch, in the 2-D ``transform`` ("bior1.5" or "dct") x Haar, aggregated under a Kaiser window of
    shape ``kaiser``."""

    patch: int
    group: int
    search: int
    stride: int
    kaiser: float
    transform: str


@dataclass(frozen=True)
class BlockMatching:
    """The classical prior's one-shot profile: BM3D's two steps (grouped hard thresholding at ``threshold`` sigma,
    then a grouped Wiener pass guided by it, noise power scaled by ``mu2``; ``wiener_high`` above ``high_sigma``,
    as BM3D has its own profile there) on the image reflect-padded by ``pad`` px."""

    hard: GroupedPass
    wiener: GroupedPass
    wiener_high: GroupedPass
    high_sigma: float
    threshold: float
    mu2: float
    pad: int


# Chosen on CBSD68 images the benchmark does not use (indices 5, 17, 40, 61, 80 px crops; 2026-12-02, see
# bench/README.md): BM3D's search window (39 px; 31 for the Wiener step: -0.002 dB, 0.6x its matching time) and
# Wiener group (32) with the white-noise threshold and Wiener scaling of the bm3d 4 library (3.0, 0.6 of its 0.4
# here); hard-threshold references every 2 px with BM3D's 16 patches (vs every 3 px with 32: +0.00 / +0.00 /
# +0.03 dB for ~1.1x the time of that step) and a 2 px pad rather than a full patch (+0.05 to +0.15 dB: mirrored
# noise in a wider pad forms false matches). Above BM3D's sigma 40 the Wiener step works in bior1.5 too (+0.03 dB
# at sigma 50, but -0.07 at 15 and -0.03 at 25).
_HARD = GroupedPass(patch=8, group=16, search=19, stride=2, kaiser=2.0, transform="bior1.5")
_WIENER = GroupedPass(patch=8, group=64, search=15, stride=4, kaiser=2.0, transform="dct")
BLOCK_MATCHING = BlockMatching(hard=_HARD, wiener=_WIENER, wiener_high=replace(_WIENER, transform="bior1.5"),
                               high_sigma=40 / 255, threshold=3.0, mu2=0.6, pad=2)

# Classical schedules: DPIR's 49/255 start and lambda 0.23 where they help, tuned on skimage photos for the rest
# (a classical prior cannot restore what a high first sigma wipes out: upscale and JPEG start low, few steps).
# Trained schedules: DPIR's (8 steps, 49/255 down to the data noise, lambda 0.23, data step first). Upscaling
# ends at scale/255 as DPIR's SR does; 16 steps at x2 are +0.15 dB over 8 (skimage photos, measured 2026-12-02),
# at x4 +0.12 dB (4 full-size CBSD68 photos the benchmark does not use, FFDNet: 28.73 -> 28.84; 24 steps 28.88).
_DENOISE = Schedule(_DPIR_START, None, 1, 1.0, final_prox=False)  # one step: the data step would only re-add noise
_DEBLUR = Task("deblur", None, Schedule(_DPIR_START, None, 8, 0.23, final_prox=False),
               Schedule(_DPIR_START, None, 8, 0.23, final_prox=False, prox_first=True))
# A Gaussian kernel has no spectral zeros: a lighter prior pull (0.1) is +0.34 dB with FFDNet on skimage photos;
# the motion kernel's zeros need DPIR's 0.23 (0.1 there: -3 dB). Measured 2026-12-02.
_GAUSSIAN_DEBLUR = Schedule(_DPIR_START, None, 8, 0.1, final_prox=False, prox_first=True)


def _upscale(scale: int, steps: int, start: float = _DPIR_START) -> Task:
    return Task("upscale", scale, Schedule(20 / 255, 3 / 255, 3, 1.0, final_prox=False),
                Schedule(start, scale / 255, steps, 0.23, final_prox=True, prox_first=True))


# x4 with a trained prior starts at 120/255 instead of DPIR's 49/255: the bicubic start is far from the answer and
# a higher first level lets FFDNet redraw more of it. +0.08 dB on the 4 full-size CBSD68 photos the benchmark does
# not use (28.84 -> 28.92), +0.07 on their 256 px crops (27.90 -> 27.97; 80/255 +0.05, 160/255 the same as 120);
# same time (measured 2026-12-02). Deblur gains only +0.02 from a higher start, so it keeps DPIR's.
_X4_START = 120 / 255


TASKS: dict[str, Task] = {
    "denoise": Task("denoise", None, _DENOISE, _DENOISE, block_matching=True),
    "deblur (gaussian)": Task("deblur", "gaussian", _DEBLUR.classical, _GAUSSIAN_DEBLUR),
    "deblur (motion)": Task("deblur", "motion", _DEBLUR.classical, _DEBLUR.trained),
    "inpaint": Task("inpaint", None, Schedule(_DPIR_START, 3 / 255, 12, 1.0, final_prox=True, prox_first=True),
                    Schedule(_DPIR_START, 2 / 255, 16, 1.0, final_prox=True, prox_first=True)),
    "upscale x2": _upscale(2, 16), "upscale x3": _upscale(3, 8), "upscale x4": _upscale(4, 16, _X4_START),
    "jpeg artifacts": Task("jpeg", None, Schedule(25 / 255, 3 / 255, 3, 1.0, final_prox=True, prox_first=True),
                           Schedule(25 / 255, 2 / 255, 8, 1.0, final_prox=True, prox_first=True)),
}
RESTORE_TASKS = list(TASKS)

# The Degrade node's damage, in the same vocabulary: its kind and parameter, as for the tasks above.
DAMAGES: dict[str, tuple[str, str | int | None]] = {
    "noise": ("noise", None), "poisson noise": ("noise", "poisson"), "camera noise": ("noise", "camera"),
    "blur (gaussian)": ("blur", "gaussian"), "blur (motion)": ("blur", "motion"),
    "random pixels": ("mask", "random"), "scratches": ("mask", "scratches"),
    "downscale x2": ("downscale", 2), "downscale x3": ("downscale", 3), "downscale x4": ("downscale", 4),
    "jpeg": ("jpeg", None),
}
DAMAGE = list(DAMAGES)
DOWNSAMPLE = ["bicubic", "area"]


def task(name: str) -> Task:
    from ..common.errors import LitError

    if name not in TASKS:
        raise LitError(f"unknown restoration task '{name}'.", input_name="degradation",
                       fix=f"choose one of {', '.join(RESTORE_TASKS)}.")
    return TASKS[name]


def schedule(name: str, trained: bool) -> Schedule:
    """The default schedule of task ``name`` with a trained (network) or the classical prior."""
    t = task(name)
    return t.trained if trained else t.classical


@dataclass(frozen=True)
class Param:
    """A user parameter: ``kind`` is the node widget type (FLOAT, INT, STRING, or a list of choices)."""

    default: float | int | str
    tooltip: str
    kind: str = "FLOAT"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[str] = field(default_factory=list)


_SEED_MAX = 0xFFFFFFFFFFFFFFFF

# The Restoration Sampler's parameters (node widgets and CLI flags).
SAMPLER: dict[str, Param] = {
    "degradation": Param("denoise", "What happened to the image: the sampler inverts exactly this.",
                         kind="CHOICE", choices=RESTORE_TASKS),
    "noise_sigma": Param(0.0, "Noise std in 0..255 units; 0 estimates it from the image (denoise and deblur: white "
                              "noise and camera grain alike; the report says what it read) or assumes clean data "
                              "(other tasks). Grain under strong JPEG compression reads low (raise it if grain is "
                              "left), texture everywhere reads high (lower it if detail is lost).",
                         low=0.0, high=255.0, step=0.5),
    "steps": Param(0, "Sampler steps; 0 uses the task's tuned default.", kind="INT", low=0, high=200),
    "seed": Param(0, "Seed of the re-noising (and of the diffusion prior): the same seed gives the same result.",
                  kind="INT", low=0, high=_SEED_MAX),
    "strength": Param(1.0, "How high the noise schedule starts: lower keeps more of the input, higher lets the "
                           "prior change more.", low=0.01, high=1.0, step=0.01),
    "blur_sigma": Param(2.0, "Deblur (gaussian): the blur's std in pixels.", low=0.1, high=20.0, step=0.1),
    "motion_length": Param(9.0, "Deblur (motion): the streak length in pixels.", low=1.0, high=100.0, step=0.5),
    "motion_angle": Param(0.0, "Deblur (motion): the streak direction in degrees.", low=-180.0, high=180.0,
                          step=1.0),
    "downsample": Param("bicubic", "Upscale: how the small image was made (antialiased bicubic or box average).",
                        kind="CHOICE", choices=DOWNSAMPLE),
    "jpeg_quality": Param(0, "JPEG: the quality it was saved at; 0 estimates it.", kind="INT", low=0, high=100),
    "poisson_gain": Param(0.0, "Denoise: shot noise (grows with brightness) gain in 0..255 units. 0 with "
                               "noise_sigma 0 reads from the photo whether the noise grows with brightness; 0 with "
                               "a noise_sigma set means plain Gaussian noise. Shot noise is made even (Anscombe "
                               "transform) before a one-step denoise.", low=0.0, high=100.0, step=0.1),
    "stochastic": Param(0.0, "Fresh seeded noise added before each prior step (0 = deterministic DPIR, 1 = fully "
                             "re-noised).", low=0.0, high=1.0, step=0.05),
    "positive": Param("", "Guidance: what the restored photo should look like.", kind="STRING"),
    "negative": Param("", "Guidance: what it should not look like.", kind="STRING"),
    "guidance": Param(0.0, "Strength of the LiT guidance step (0 = off; needs a LiT model and a prompt).",
                      low=0.0, high=10.0, step=0.05),
}

# The Degrade node's parameters.
DEGRADE: dict[str, Param] = {
    "damage": Param("noise", "The kind of damage.", kind="CHOICE", choices=DAMAGE),
    "noise_sigma": Param(25.0, "Gaussian noise std in 0..255 units, added for 'noise', 'poisson noise' and after "
                               "'blur'/'downscale' (0 = none); for 'camera noise' the sensor's, before "
                               "demosaicing (grain correlated as a camera's).", low=0.0, high=255.0, step=0.5),
    "seed": Param(0, "Seed of the noise and masks.", kind="INT", low=0, high=_SEED_MAX),
    "blur_sigma": Param(2.0, "Blur (gaussian): std in pixels.", low=0.1, high=20.0, step=0.1),
    "motion_length": Param(9.0, "Blur (motion): streak length in pixels.", low=1.0, high=100.0, step=0.5),
    "motion_angle": Param(0.0, "Blur (motion): streak direction in degrees.", low=-180.0, high=180.0, step=1.0),
    "fraction": Param(0.5, "Random pixels: the share of pixels removed.", low=0.0, high=0.99, step=0.01),
    "scratches": Param(6, "Scratches: how many lines.", kind="INT", low=1, high=100),
    "scratch_width": Param(3.0, "Scratches: line width in pixels.", low=1.0, high=50.0, step=0.5),
    "downsample": Param("bicubic", "Downscale: antialiased bicubic or box average.", kind="CHOICE",
                        choices=DOWNSAMPLE),
    "jpeg_quality": Param(10, "JPEG: quality to save at (PIL, standard tables, 4:2:0).", kind="INT", low=1,
                          high=100),
    "poisson_gain": Param(5.0, "Poisson noise: shot-noise gain in 0..255 units.", low=0.0, high=100.0, step=0.1),
}
