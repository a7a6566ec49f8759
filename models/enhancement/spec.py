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
# Exposure control (as Zero-DCE's L_exp): a photo whose mean level is far from mid-grey gets a midtone (gamma)
# correction toward TARGET_MEAN; inside the dead zone [DARK_MEAN, BRIGHT_MEAN] nothing moves. TARGET_MEAN is the
# median mean level of natural photos (0.42 on CBSD68; 0.45 did 1.3 dB worse there on gamma-darkened photos).
TARGET_MEAN = 0.42
DARK_MEAN = (0.22, 0.27)      # full correction below the first value, none above the second
# ... or when this fraction of the pixels is deep shadow (luminance < 0.1): none at the first, full at the second
DARK_FRACTION = (0.3, 0.45)
BRIGHT_MEAN = (0.75, 0.82)    # none below the first, full above the second
# Levels: the robust white point (top pixel quantile over all channels) of a correctly exposed photo is ~1; well
# below it, the photo is underexposed or flattened and is stretched back. Then per channel (white patch, the
# colour-constancy estimate that is right when the scene has a near-white highlight): a channel whose white point
# stays well below the others' after that is a colour cast, removed by a per-channel stretch. Natural photos have
# channel white points down to ~0.88 (blue skies aside, sunlit scenes are warm), so the dead zones are wide.
LEVEL_QUANTILE = 1e-4
# The global stretch is gated on the range deficit (1 - white point) + black point: a correct photo can miss
# ~0.2 of the range (the scikit-image cat: white point 0.82), an underexposed or flattened one misses much more.
RANGE_DEFICIT_GATE = (0.25, 0.35)  # no stretch below the first, full stretch above the second
# Per channel, relative to the brightest channel's white point: a cast when well below it.
CHANNEL_WHITE_GATE = (0.9, 0.84)
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
    "allow_colour": "Let the guide change white balance and saturation (global only). Off: the guide may only "
                    "change tones, and colour comes from the auto-grade's white balance.",
}
