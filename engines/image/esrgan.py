"""ESRGAN's RRDBNet in plain torch: the state dicts of ESRGAN-family upscalers, loaded and run in tiles.

spandrel would load these, but importing it loads every architecture it knows, and some need
torchvision, which the CPU install removes (engines/image/upscale.py says why). RRDBNet is a few
dozen lines, so this module carries its own copy, with the parameter names of Real-ESRGAN's
(BasicSR's) RRDBNet so that their state dicts load as they are:

- new-style keys, as in the Real-ESRGAN release files (RealESRGAN_x4plus, RealESRNet_x4plus,
  RealESRGAN_x4plus_anime_6B, RealESRGAN_x2plus): conv_first, body.N.rdb1.conv1, conv_body,
  conv_up1, conv_up2, conv_hr, conv_last; often wrapped in "params_ema" or "params".
- old-style ESRGAN keys (model.0, model.1.sub.N.RDB1.conv1.0, ... as in 4x-UltraSharp), renamed
  to the new ones on load.

The architecture is read from the weights: the width (num_feat), the growth (num_grow_ch), the
number of RRDB blocks, and the scale. New-style networks always upsample x4 at their end; a x2
or x1 model first folds its input into 4 or 16 channels per colour with pixel-unshuffle, so its
conv_first takes 12 or 48 channels. Old-style networks have one nearest-neighbour x2 stage per
upsampling conv and no unshuffle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

WEIGHT_SUFFIXES = (".pth", ".safetensors")
# Wrappers of the state dict in training checkpoints; the EMA weights are the ones to serve.
_WRAPPERS = ("params_ema", "params", "state_dict")
_NEW_BLOCK = re.compile(r"^body\.(\d+)\.rdb1\.conv1\.weight$")
_OLD_BLOCK = re.compile(r"^model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$")
_OLD_TOP_CONV = re.compile(r"^model\.(\d+)\.weight$")
_OLD_RDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")


class NotEsrgan(ValueError):
    """The weights are no RRDBNet state dict; the message says what was missing."""


class RrdbConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The shape of an RRDBNet, read from its state dict."""

    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    # Pixel-unshuffle factor of the input (1: none; 2 for a x2 model, 4 for a x1 one).
    unshuffle: int = 1
    # Nearest-neighbour x2 stages, each followed by a conv (conv_up1, conv_up2, ...).
    upsamples: int = 2

    @property
    def scale(self) -> int:
        """Output pixels per input pixel, along each side."""
        return 2**self.upsamples // self.unshuffle


def build_rrdbnet(config: RrdbConfig) -> Any:
    """An RRDBNet (torch.nn.Module) of `config`'s shape, randomly initialised."""
    from engines.image.rrdbnet import RRDBNet

    return RRDBNet(config)


def weights_file(path: Path) -> Path:
    """The weights of an ESRGAN-family model: `path` itself, or the one .pth/.safetensors file in the folder `path`."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()) if path.is_dir() else []
    if len(found) != 1:
        what = ", ".join(p.name for p in found) or "none"
        raise NotEsrgan(f"{path}: an ESRGAN model is one .pth or .safetensors file; found {what}")
    return found[0]


def state_dict_keys(path: Path) -> set[str]:
    """The keys of a weights file's state dict, unwrapped, without reading its tensors (a .pth is memory-mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            return set(weights.keys())
    return set(read_state_dict(path))


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a .pth or .safetensors file, unwrapped from a training checkpoint's wrapper."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        import torch

        # weights_only: a .pth is a pickle, and nothing but tensors and containers may come out of it.
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format, as in 2018's ESRGAN files, cannot be mapped
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict):
        raise NotEsrgan(f"{path}: holds no state dict")
    return state


def _old_to_new(state: dict[str, Any]) -> dict[str, Any]:
    """Old ESRGAN names (model.N...) renamed to RRDBNet's; the network's head is the numbered convs
    after the trunk: up-convs, then conv_hr, then conv_last."""
    blocks = sorted({int(m.group(1)) for key in state if (m := _OLD_BLOCK.match(key))})
    num_block = len(blocks)
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        if m := _OLD_RDB.match(key):
            block, rdb, conv, kind = m.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{num_block}."):
            renamed["conv_body." + key.rsplit(".", 1)[1]] = value
    head = sorted({int(m.group(1)) for key in state if (m := _OLD_TOP_CONV.match(key)) and int(m.group(1)) >= 2})
    if "model.0.weight" not in state or len(head) < 2:
        raise NotEsrgan("an ESRGAN state dict (model.N keys) without its first conv or its head")
    names = [*(f"conv_up{i}" for i in range(1, len(head) - 1)), "conv_hr", "conv_last"]
    for name, index in zip(["conv_first", *names], [0, *head], strict=True):
        for kind in ("weight", "bias"):
            renamed[f"{name}.{kind}"] = state[f"model.{index}.{kind}"]
    return renamed


def rrdb_state(state: dict[str, Any]) -> tuple[RrdbConfig, dict[str, Any]]:
    """The config of the RRDBNet that `state` (either key style) belongs to, and the state in new-style names."""
    if "model.0.weight" in state:
        state = _old_to_new(state)
    required = (
        "conv_first.weight",
        "conv_body.weight",
        "conv_hr.weight",
        "conv_last.weight",
        "body.0.rdb1.conv1.weight",
    )
    missing = [key for key in required if key not in state]
    if missing:
        raise NotEsrgan(f"not an RRDBNet state dict: no {', '.join(missing)}")
    num_out_ch, num_feat = (int(n) for n in state["conv_last.weight"].shape[:2])
    first_in = int(state["conv_first.weight"].shape[1])
    # conv_first takes the unshuffled input: 3 colours x 1, 4 or 16 (x4, x2, x1 models).
    unshuffle = next((f for f in (1, 2, 4) if first_in == num_out_ch * f * f), None)
    if unshuffle is None:
        raise NotEsrgan(f"conv_first takes {first_in} channels, no pixel-unshuffle of {num_out_ch} colours")
    config = RrdbConfig(
        num_in_ch=num_out_ch,
        num_out_ch=num_out_ch,
        num_feat=num_feat,
        num_block=len({int(m.group(1)) for key in state if (m := _NEW_BLOCK.match(key))}),
        num_grow_ch=int(state["body.0.rdb1.conv1.weight"].shape[0]),
        unshuffle=unshuffle,
        upsamples=sum(1 for key in state if re.fullmatch(r"conv_up\d+\.weight", key)),
    )
    return config, state


def is_rrdb_state(keys: set[str] | list[str]) -> bool:
    """Whether state-dict keys (either style, unwrapped) are an RRDBNet's: a cheap check for classifying files."""
    names = set(keys)
    new = {"conv_first.weight", "conv_body.weight", "conv_last.weight", "body.0.rdb1.conv1.weight"} <= names
    return new or {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"} <= names


def load_rrdbnet(path: Path, *, device: str = "cpu") -> Any:
    """The RRDBNet in the weights file at `path`, in eval mode on `device` (float32). Blocking."""
    config, state = rrdb_state(read_state_dict(path))
    net = build_rrdbnet(config)
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most `tile` covering [0, length), without overlap."""
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


def upscale_tensor(
    net: Any,
    image: Any,
    *,
    tile: int = 0,
    pad: int = 16,
    on_tile: Callable[[int, int], None] | None = None,
    as_bytes: bool = False,
) -> Any:
    """`image` (1, C, H, W floats in [0, 1]) through `net`, at net.config.scale times its size.

    The result is floats in [0, 1] on the CPU, or with `as_bytes` uint8 in [0, 255]: each tile is
    converted as it comes, so the full-size result takes a quarter of the memory (a 2048-pixel
    input gives an 8192-pixel x4 output: 805 MB as floats, 201 MB as bytes).

    With `tile` > 0 the input is cut into tiles of at most tile x tile pixels; each runs with up to
    `pad` pixels of its neighbours around it, and only its own share of the output is kept. Beyond
    the network's receptive field the padding makes no difference, so the result is the untiled one
    (within float rounding) while memory stays bounded by the tile. `on_tile(done, total)` is
    called before each tile (and at the end with done == total): progress, and a place to stop.
    """
    import torch
    import torch.nn.functional as functional

    config: RrdbConfig = net.config
    factor, scale = config.unshuffle, config.scale
    _, _, height, width = image.shape
    # pixel-unshuffle needs sides that are multiples of its factor: edge pixels repeated, cropped after.
    grow_y, grow_x = -height % factor, -width % factor
    if grow_x or grow_y:
        image = functional.pad(image, (0, grow_x, 0, grow_y), mode="replicate")
    padded_h, padded_w = image.shape[2], image.shape[3]
    if tile <= 0:
        tile = max(padded_h, padded_w)
    tile = max(factor, tile // factor * factor)
    pad = -(-pad // factor) * factor  # tiles and their context stay on the unshuffle grid
    spans = [(y, x) for y in tile_spans(padded_h, tile) for x in tile_spans(padded_w, tile)]
    dtype = torch.uint8 if as_bytes else torch.float32
    output = torch.empty((1, config.num_out_ch, padded_h * scale, padded_w * scale), dtype=dtype)
    with torch.inference_mode():
        for index, ((top, bottom), (left, right)) in enumerate(spans):
            if on_tile is not None:
                on_tile(index, len(spans))
            ctx_top, ctx_left = max(top - pad, 0), max(left - pad, 0)
            ctx_bottom, ctx_right = min(bottom + pad, padded_h), min(right + pad, padded_w)
            part = net(image[:, :, ctx_top:ctx_bottom, ctx_left:ctx_right])
            keep = part[
                :,
                :,
                (top - ctx_top) * scale : (bottom - ctx_top) * scale,
                (left - ctx_left) * scale : (right - ctx_left) * scale,
            ]
            keep = keep.float().clamp(0, 1).cpu()
            if as_bytes:
                keep = keep.mul(255).round().to(torch.uint8)
            output[:, :, top * scale : bottom * scale, left * scale : right * scale] = keep
    if on_tile is not None:
        on_tile(len(spans), len(spans))
    return output[:, :, : height * scale, : width * scale]
