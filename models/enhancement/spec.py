"""The enhancement feature's one spec: grade parameters (ranges, identity, words), auto-grade constants, and the
sampler node's inputs (defaults, ranges, tooltips). The operator, the auto-grade, the sampler and the nodes all
read this file, so a range changed here changes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GradeParam:
    name: str
    low: float
    high: float
    identity: float
    unit: str
    words: str  # what it means to a photographer (shown in the report)


# Every grade parameter is clamped into its range by the operator: no fit, file or guide can push one further.
# Global terms only touch colour through white balance and saturation; the local term is a luminance gain, so no
# setting can paint a colour that is not already in the photo.
GRADE_PARAMS: dict[str, GradeParam] = {p.name: p for p in (
    GradeParam("white_balance", -0.7, 0.7, 0.0, "log gain per channel",
               "white balance: per-channel gains (R/G/B) that neutralise a colour cast; luminance is kept"),
    GradeParam("black", 0.0, 0.45, 0.0, "level",
               "black point (Levels): this input level becomes pure black"),
    GradeParam("white", 0.35, 1.0, 1.0, "level",
               "white point (Levels): this input level becomes pure white"),
    GradeParam("exposure", -3.0, 3.0, 0.0, "stops",
               "exposure in stops (EV): +1 doubles the light"),
    GradeParam("gamma", -1.5, 1.5, 0.0, "log2 exponent",
               "midtones (gamma): positive lifts the midtones and shadows, keeping black and white"),
    GradeParam("shadow_gain", 1.0, 8.0, 8.0, "stops",
               "shadow limit: the most the midtone lift may brighten the deepest shadows (so noise and JPEG steps "
               "in them do not become colour speckle); 8 stops is no limit"),
    GradeParam("contrast", -0.7, 0.7, 0.0, "log gain",
               "contrast around mid-grey"),
    GradeParam("saturation", -0.7, 0.7, 0.0, "log gain",
               "saturation (colour intensity); hue is never rotated"),
    GradeParam("local", -1.0, 1.0, 0.0, "stops",
               "local dodge and burn: a smooth, edge-aware brightness map (luminance only, never colour)"),
    GradeParam("detail", -0.5, 1.0, 0.0, "amount",
               "sharpening (unsharp mask on luminance)"),
)}

# Bilateral grid of the local term: luminance bins x rows x columns. Coarse on purpose (a few cells per side):
# the grid can brighten a region, never a speckle.
GRID_SIZE = (8, 6, 6)
# Blur sigma of the detail term as a fraction of the image's short side (same meaning at any size).
DETAIL_SIGMA_FRACTION = 1.0 / 100.0

# ---- auto-grade (no-reference) constants ----
# Every gate below is calibrated on a held-out set of ordinary photos (800 Flickr8k photos from ../shared, not the
# benchmark's CBSD68; `python bench/enhancement.py --calibrate` prints these statistics and how many of those photos
# the auto-grade moves): a correction starts only where a photo's statistic lies outside what nearly all correctly
# exposed photos show, so a normal photo comes back untouched.
#
# Exposure control (Zero-DCE's L_exp pulls the level toward a well-exposed target), in a perceptual (log) space:
# the geometric-mean luminance of a photo, exp(mean(log Y)). A tone curve y = x ** e scales mean(log Y) by e, so
# g = log2(mean(log Y) / PRIOR_MEAN_LOG) is the midtone exponent (in the `gamma` parameter's units) that brings a
# photo to the typical level of the calibration photos (their median geometric mean is exp(-1.0) = 0.37).
PRIOR_MEAN_LOG = -1.0
LOG_FLOOR = 1.0 / 255.0       # luminance floor inside the log (an 8-bit black)
# g above DARK_GATE[0] (darker than 90% of the calibration photos) starts the correction, full at DARK_GATE[1]
# (darker than 95%). No statistic tells a dark scene from a darkened photo for sure: ~8% of the calibration photos
# (night and candle-lit scenes) get some midtone lift (see bench/README.md). Crushed shadows are no evidence either
# way: night photos have them as often as darkened ones. What the content says decides next: the sampler's dark-scene
# check (dark_scene.py) takes the lift back where the embedded tower reads a dark scene.
DARK_GATE = (0.7, 0.9)
# The dark-scene check (dark_scene.py; fitted by bench/fit_dark_scene_probe.py, cross-validated on Flickr8k photos
# and darkened copies). Its threshold keeps DARK_SCENE_KEEP_LIFTS of the lifts of darkened copies; there it spares
# 53% of the originals the gate would lift (44% with the centre crop alone instead of the whole photo's 5 views,
# measured on 400 px thumbnails).
# The lift fades over +-DARK_SCENE_RAMP logits: a partial lift helps neither kind of photo (on CBSD68 a ramp of
# +-0.25 cost darkened copies 0.7 dB more than a near-step), so the ramp only avoids a jump.
DARK_SCENE_KEEP_LIFTS = 0.95
DARK_SCENE_RAMP = 0.05
DARK_SCENE_SIDE = 400          # the probe judges each photo at a longest side of 400 px, as it was fitted
DARK_SCENE_VIEWS = "whole photo"
BRIGHT_MEAN = (0.75, 0.82)    # arithmetic mean level: none below the first, full above the second (overexposed)
# Levels: the robust white and black points (pixel quantiles over all channels together). 99% of the calibration
# photos have a white point >= 0.78 and a black point <= 0.075. A white point below WHITE_GATE is underexposure
# (none at the first value, full stretch at the second); a black point above BLACK_GATE is a flattened (hazy,
# low-contrast) photo. Either stretches the tonal range back to 0..1 (all channels together: colour is kept).
LEVEL_QUANTILE = 1e-4
WHITE_GATE = (0.6, 0.5)
BLACK_GATE = (0.13, 0.17)
# Colour cast (white patch): the lowest channel's white point relative to the brightest one. 99% of the calibration
# photos are above 0.77 (warm sunlit scenes have a low blue); below CHANNEL_WHITE_GATE the photo has a cast, and
# then every channel's white point is aligned (none at the first value, full at the second).
CHANNEL_WHITE_GATE = (0.7, 0.62)
# Noise-aware shadow limit. A midtone lift x ** e has a gain x ** (e - 1) that grows without bound toward black, so
# it multiplies whatever noise the shadows hold (sensor noise, JPEG blocks, 8-bit steps) into visible speckle, and
# per-channel noise into *colour* speckle. The lift's gain is capped at K = SHADOW_NOISE_TARGET / sigma (within
# SHADOW_GAIN_RANGE), sigma the shadows' noise (robust Haar-wavelet estimate, see auto.shadow_noise). Even a clean
# 8-bit file gains from a cap: on Flickr8k photos darkened by gamma 2.2 (not the benchmark), a fixed x16 cap on the
# lift alone raised the lifted photos' PSNR to the original 26.5 -> 27.2 dB and cut CIEDE2000 6.07 -> 5.61 (the
# crushed codes near black hold no more detail than that); a cap from x4 at sigma = 3 8-bit codes (the texture
# the estimator sees in the shadows of those downscaled photos) cost them 0.6 dB, so the cap falls below x16
# only for noisier shadows (sigma > 2.9 codes, as in full-resolution phone night shots).
SHADOW_NOISE_TARGET = 0.18
SHADOW_GAIN_RANGE = (4.0, 16.0)   # the cap, as a gain (x4 on the noisiest photos, x16 on clean 8-bit files)
SHADOW_LEVEL = 0.15               # shadows for the noise estimate: 2x2 blocks darker than this (after levels)
# Shadow chroma: where the tone curve brightens a pixel more than CHROMA_GAIN[0] times (full at [1]), its chroma
# (colour minus luminance) is blended toward a CHROMA_SIGMA-pixel blur of the chroma: amplified per-channel noise
# averages out, luminance detail is untouched, and no colour appears that the neighbourhood does not have. On the
# gamma-2.2 Flickr8k photos: CIEDE2000 5.71 -> 5.52, PSNR +0.18 dB; exposure x0.4: 2.00 -> 1.93, +0.05 dB (these
# and the chroma-cap numbers below were measured with the cast gate judged after the lift, since reverted).
# Chroma is amplified at most CHROMA_MAX_GAIN times however far the luminance is lifted (the deepest shadows of a
# JPEG hold block-shaped chroma error that a x16 lift turns purple and green; looked at): on the same photos a cap
# of x8 gave 27.19 dB / 5.38, x6 27.06 / 5.44, x4 26.60 / 5.71, none 27.13 / 5.53; x6 is the compromise kept.
CHROMA_GAIN = (2.0, 4.0)
CHROMA_SIGMA = 1.0
CHROMA_MAX_GAIN = 6.0
# Work on at most this many pixels for statistics (strided, not averaged, so extremes survive).
STAT_PIXELS = 1 << 18

# ---- guided refinement ----
DEFAULT_POSITIVE = "a bright, well-exposed, crisp, vivid photo"
DEFAULT_NEGATIVE = "a dark, dull, hazy, washed-out photo"
# The guide's gain must exceed this many standard deviations of its own score noise (the spread of its score over
# crops and flips of the same auto-graded image) before its refinement replaces the auto-grade.
NOISE_SIGMAS = 2.0
# Luminance spread below which an image is flat (one colour): a guide has nothing to judge there.
FLAT_STD = 0.01
# Learning rates (per parameter, in its own units) and restart noise of the refinement.
REFINE_LR = {"exposure": 0.03, "gamma": 0.03, "contrast": 0.02, "local": 0.02, "detail": 0.05,
             "white_balance": 0.01, "saturation": 0.02}
REFINE_NOISE = {"exposure": 0.1, "gamma": 0.1, "contrast": 0.05, "local": 0.02, "detail": 0.1,
                "white_balance": 0.02, "saturation": 0.05}
TONE_PARAMS = ("exposure", "gamma", "contrast", "local", "detail")
COLOUR_PARAMS = ("white_balance", "saturation")

# ---- node inputs: (default, min, max, step, tooltip) ----
NODE_INPUTS = {
    "steps": (40, 0, 1000, 1, "Refinement steps of the LiT guide on a small copy (0: the auto-grade only). "
                              "Ignored without a LiT model."),
    "guidance": (1.0, 0.0, 20.0, 0.05, "How hard the prompts may push the grade away from the auto-grade. 0: "
                                       "auto-grade only."),
    "fidelity": (1.0, 0.0, 20.0, 0.05, "How hard the refinement is held to the auto-grade and to the photo's "
                                       "structure. Raise it for subtler edits."),
    "samples": (2, 1, 16, 1, "Refinement restarts from slightly different starting grades; the best is kept "
                             "(and then only if the guide's gain is above its own noise)."),
    "strength": (1.0, 0.0, 1.0, 0.05, "Scales the fitted grade back toward no change: 0 returns the input, "
                                      "0.5 half of every adjustment, 1 the full grade."),
    "proxy_size": (256, 32, 1024, 16, "Longest side of the small copy the guide refines on."),
}
NODE_TOOLTIPS = {
    "image": "Images to enhance (any size; each gets its own grade unless 'shared' is on).",
    "lit_model": "Optional LiT model (or any dual encoder) that refines the auto-grade toward the positive prompt. "
                 "Without it the node runs the no-reference auto-grade (exposure, levels, white balance) alone.",
    "positive": "The look you want (used only with a LiT model). One prompt per line; several are averaged.",
    "negative": "Its opposite (used only with a LiT model). One prompt per line; several are averaged.",
    "seed": "Seed of the refinement restarts; the same seed gives the same result.",
    "mask": "Only where the mask is 1 may the image change (soft edges blend). Must have the image's size.",
    "shared": "Fit one grade for the whole batch (consistent frames of a video) instead of one per image.",
    "auto_grade": "Start from the no-reference auto-grade (exposure, levels, white balance from the image's "
                  "statistics). Off: start from no change, so only the guide moves the image.",
    "dark_scene_check": "Let the embedded image tower judge each photo the auto-grade would brighten: a dark scene "
                        "(night, a portrait on black, a reef at depth) keeps its tones, a darkened photo is lifted. "
                        "Off: every photo darker than nearly all correctly exposed ones is lifted.",
    "allow_colour": "Let the guide change white balance and saturation (global only). Off: the guide may only "
                    "change tones, and colour comes from the auto-grade's white balance.",
}
