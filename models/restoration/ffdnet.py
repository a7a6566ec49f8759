"""FFDNet (Zhang, Zuo, Zhang, TIP 2018): a noise-level-conditioned CNN denoiser, and a converter for its original
MatConvNet weights.

spandrel (0.4.2) has no FFDNet architecture, so the small network is written here: a reversible 2x pixel-unshuffle,
a noise-map channel at the input noise level, then ``depth`` 3x3 conv layers (ReLU between them; batch norm merged
into the convs in the released weights), and the inverse pixel-shuffle. It predicts the clean image directly.
Colour: 12 layers of 96 channels; grey: 15 of 64 (as published, and as the layer list in the ``.mat`` files says).

The released ``FFDNet_color.mat`` / ``FFDNet_gray.mat`` are MATLAB v7.3 (HDF5) files; :func:`convert_mat` reads
them with ``h5py`` (an optional dependency, needed only to convert) into a ``.safetensors`` file that carries
``architecture = FFDNet`` in its metadata, which :func:`load_ffdnet` (and the sampler's ``--prior``) reads back.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.errors import LitError

ARCH_NAME = "FFDNet"


class FFDNet(nn.Module):
    """``FFDNet(x [B,C,H,W] in 0..1, sigma [B] in 0..1 units) -> clean estimate``, any (odd too) size."""

    def __init__(self, in_nc: int = 3, nc: int = 96, depth: int = 12) -> None:
        super().__init__()
        if in_nc not in (1, 3):
            raise LitError(f"FFDNet takes 1 or 3 channels, not {in_nc}.", input_name="in_nc")
        self.in_nc, self.nc, self.depth = in_nc, nc, depth
        layers: list[nn.Module] = []
        ch = in_nc * 4 + 1
        for i in range(depth):
            out = in_nc * 4 if i == depth - 1 else nc
            layers.append(nn.Conv2d(ch, out, 3, padding=1))
            if i < depth - 1:
                layers.append(nn.ReLU(inplace=True))
            ch = out
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        h, w = x.shape[-2:]
        # odd sizes: replicate the last row / column (the MATLAB demo's rule), crop after
        xp = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else x
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).flatten()
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        down = F.pixel_unshuffle(xp, 2)
        noise_map = s.view(-1, 1, 1, 1).expand(-1, 1, *down.shape[-2:])
        out = F.pixel_shuffle(self.body(torch.cat([down, noise_map], 1)), 2)
        return out[..., :h, :w]


def config_from_state_dict(sd: dict[str, Tensor]) -> dict[str, int]:
    """``in_nc``, ``nc`` and ``depth`` of the FFDNet these weights belong to (refuses other layouts)."""
    convs = sorted({int(k.split(".")[1]) for k in sd if k.startswith("body.") and k.endswith(".weight")})
    if not convs or any(f"body.{i}.bias" not in sd for i in convs):
        raise LitError("these weights are not an FFDNet state dict (no body.N.weight / body.N.bias).",
                       input_name="prior")
    first, last = sd[f"body.{convs[0]}.weight"], sd[f"body.{convs[-1]}.weight"]
    in_nc = last.shape[0] // 4
    cfg = {"in_nc": in_nc, "nc": int(first.shape[0]), "depth": len(convs)}
    if first.shape[1] != in_nc * 4 + 1 or convs != [2 * i for i in range(len(convs))]:
        raise LitError("these FFDNet weights have an unexpected layer layout.", input_name="prior")
    return cfg


def build_from_state_dict(sd: dict[str, Tensor], source: str = "weights") -> FFDNet:
    """An FFDNet with exactly these weights: unexpected, missing or non-finite tensors are refused."""
    net = FFDNet(**config_from_state_dict(sd))
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise LitError(f"tensor '{k}' in {source} has NaN or infinite values.", input_name="prior",
                           fix="the file is damaged: convert or download it again.")
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise LitError(f"the weights in {source} do not fit FFDNet: {err}", input_name="prior") from err
    return net.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- MatConvNet


def _mat_string(ds) -> str:
    import numpy as np

    return "".join(chr(c) for c in np.asarray(ds).flatten())


def read_mat(path: str) -> dict[str, Tensor]:
    """The state dict of an original FFDNet MatConvNet ``.mat`` (v7.3 / HDF5), checked against its layer list."""
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is installed where conversion is used
        raise LitError("converting MatConvNet weights needs h5py.", input_name="path",
                       fix="pip install h5py (only needed once, to convert).") from err
    import numpy as np

    if not os.path.isfile(path):
        raise LitError(f"'{path}' does not exist.", input_name="path")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise LitError(f"'{os.path.basename(path)}' is not a MATLAB v7.3 (HDF5) file: {err}", input_name="path",
                       fix="give the original FFDNet_color.mat or FFDNet_gray.mat.") from err
    with f:
        if "net" not in f or "layers" not in f["net"]:
            raise LitError(f"'{os.path.basename(path)}' has no net.layers: not a MatConvNet simplenn file.",
                           input_name="path")
        layers = f["net/layers"]
        types, convs = [], []
        for i in range(layers.shape[0]):
            g = f[layers[i, 0]]
            kind = _mat_string(g["type"])
            types.append(kind)
            if kind == "conv":
                refs = np.asarray(g["weights"]).flatten()
                # MATLAB is column-major: h5py sees [Cout, Cin, kw, kh]; torch wants [Cout, Cin, kh, kw]
                w = torch.from_numpy(np.asarray(f[refs[0]], dtype=np.float32)).transpose(-1, -2).contiguous()
                b = torch.from_numpy(np.asarray(f[refs[1]], dtype=np.float32)).flatten()
                convs.append((w, b))
            elif kind == "SubP":
                scale = float(np.asarray(g["scale"]).flatten()[0])
                if scale not in (0.5, 2.0):
                    raise LitError(f"unexpected sub-pixel scale {scale} in the layer list.", input_name="path")
            elif kind not in ("relu", "concat"):
                raise LitError(f"unexpected MatConvNet layer type '{kind}': not an FFDNet file.", input_name="path")
    expect = ["SubP", "concat"] + ["conv", "relu"] * (len(convs) - 1) + ["conv", "SubP"]
    if types != expect:
        raise LitError(f"the layer list ({len(types)} layers) is not FFDNet's SubP-concat-(conv-relu)*-conv-SubP.",
                       input_name="path")
    # MatConvNet's sub-pixel layer orders the four phases column-major (dy + 2 dx) within each colour channel;
    # torch's pixel_unshuffle orders them row-major (2 dy + dx): swap phases 1 and 2 at both ends of the net
    c = convs[-1][0].shape[0] // 4
    idx = torch.tensor([ch * 4 + q for ch in range(c) for q in (0, 2, 1, 3)])
    w0, b0 = convs[0]
    convs[0] = (torch.cat([w0[:, idx], w0[:, 4 * c:]], 1), b0)
    wl, bl = convs[-1]
    convs[-1] = (wl[idx].contiguous(), bl[idx].contiguous())
    return {**{f"body.{2 * i}.weight": w for i, (w, _) in enumerate(convs)},
            **{f"body.{2 * i}.bias": b for i, (_, b) in enumerate(convs)}}


def convert_mat(path: str, out: str) -> str:
    """Convert an original FFDNet ``.mat`` to ``.safetensors`` at ``out`` (temp name, then rename)."""
    from safetensors.torch import save_file

    sd = read_mat(path)
    net = build_from_state_dict(sd, os.path.basename(path))  # proves the weights fit before writing
    meta = {"architecture": ARCH_NAME, **{k: str(v) for k, v in config_from_state_dict(sd).items()},
            "source": os.path.basename(path)}
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp, metadata=meta)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out
