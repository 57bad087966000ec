"""The RRDBNet of engines/image/esrgan.py: both key styles load, the shape is read from the weights,
outputs are scale x input, and tiles give the untiled result."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from engines.base import ModelKind
from engines.image.esrgan import (
    NotEsrgan,
    RrdbConfig,
    build_rrdbnet,
    is_rrdb_state,
    load_rrdbnet,
    read_state_dict,
    rrdb_state,
    upscale_tensor,
    weights_file,
)
from engines.model_files import ESRGAN_ENGINE, UnrecognizedModel, infer_model

TINY = RrdbConfig(num_feat=8, num_block=1, num_grow_ch=4)


def net_of(config: RrdbConfig, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return build_rrdbnet(config).eval()


def old_style(state: dict[str, Any], num_block: int) -> dict[str, Any]:
    """A new-style x4 state dict under the 2018 ESRGAN names (model.0, model.1.sub.N.RDBk.convj.0, ...)."""
    top = {"conv_first": 0, "conv_up1": 3, "conv_up2": 6, "conv_hr": 8, "conv_last": 10}
    old: dict[str, Any] = {}
    for key, value in state.items():
        name, kind = key.rsplit(".", 1)
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)", name):
            old[f"model.1.sub.{m.group(1)}.RDB{m.group(2)}.conv{m.group(3)}.0.{kind}"] = value
        elif name == "conv_body":
            old[f"model.1.sub.{num_block}.{kind}"] = value
        else:
            old[f"model.{top[name]}.{kind}"] = value
    return old


@pytest.mark.parametrize(
    ("config", "scale"),
    [
        (TINY, 4),  # RealESRGAN_x4plus / RealESRNet_x4plus layout
        (RrdbConfig(num_feat=8, num_block=6, num_grow_ch=4), 4),  # the anime 6B layout
        (RrdbConfig(num_feat=8, num_block=2, num_grow_ch=4, unshuffle=2), 2),  # RealESRGAN_x2plus
        (RrdbConfig(num_feat=8, num_block=1, num_grow_ch=4, unshuffle=4), 1),
    ],
)
def test_the_shape_is_read_from_the_weights_and_the_output_is_scale_times_the_input(
    config: RrdbConfig, scale: int
) -> None:
    net = net_of(config)
    inferred, _ = rrdb_state(net.state_dict())
    assert inferred == config and inferred.scale == scale
    rebuilt = build_rrdbnet(inferred)
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    # Odd sides: a x2 or x1 model pads to its unshuffle grid and crops after.
    out = upscale_tensor(rebuilt, torch.rand(1, 3, 13, 10))
    assert tuple(out.shape) == (1, 3, 13 * scale, 10 * scale)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_wrapped_pth_and_safetensors_files_load_the_same_network(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net = net_of(TINY)
    image = torch.rand(1, 3, 9, 7)
    expected = upscale_tensor(net, image)
    state = net.state_dict()
    torch.save({"params_ema": state, "params": {}}, tmp_path / "ema.pth")
    torch.save({"params": state}, tmp_path / "params.pth")
    torch.save(state, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    for name in ("ema.pth", "params.pth", "bare.pth", "model.safetensors"):
        loaded = load_rrdbnet(tmp_path / name)
        assert loaded.config == TINY, name
        assert torch.equal(upscale_tensor(loaded, image), expected), name


def test_old_esrgan_keys_load_as_the_same_network(tmp_path: Path) -> None:
    config = RrdbConfig(num_feat=8, num_block=2, num_grow_ch=4)
    net = net_of(config, seed=3)
    old = old_style(net.state_dict(), config.num_block)
    assert is_rrdb_state(set(old)) and "model.0.weight" in old
    inferred, renamed = rrdb_state(old)
    assert inferred == config and set(renamed) == set(net.state_dict())
    torch.save(old, tmp_path / "4x-old.pth")
    loaded = load_rrdbnet(tmp_path / "4x-old.pth")
    image = torch.rand(1, 3, 8, 11)
    assert torch.equal(upscale_tensor(loaded, image), upscale_tensor(net, image))


def test_tiles_give_the_untiled_result() -> None:
    net = net_of(TINY, seed=1)
    image = torch.rand(1, 3, 45, 38)
    untiled = upscale_tensor(net, image)
    seen: list[tuple[int, int]] = []
    # The tiny net sees about 18 input pixels around each one: 24 pixels of context cover that.
    tiled = upscale_tensor(net, image, tile=16, pad=24, on_tile=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (9, 9) and [done for done, _ in seen] == list(range(10))  # 3 x 3 tiles, then the end
    assert tiled.shape == untiled.shape
    assert torch.allclose(tiled, untiled, atol=1e-5)
    # As bytes, tile by tile: the float result rounded to 8 bits.
    as_bytes = upscale_tensor(net, image, tile=16, pad=24, as_bytes=True)
    assert as_bytes.dtype == torch.uint8
    assert (as_bytes.int() - untiled.mul(255).round().int()).abs().max() <= 1
    # Without context each tile sees zero padding at its cut: the seams differ.
    seamed = upscale_tensor(net, image, tile=16, pad=0)
    assert not torch.allclose(seamed, untiled, atol=1e-3)


def test_a_stop_between_tiles_ends_the_run() -> None:
    class Stop(Exception):
        pass

    def stop_at_second(done: int, total: int) -> None:
        if done == 1:
            raise Stop

    with pytest.raises(Stop):
        upscale_tensor(net_of(TINY), torch.rand(1, 3, 20, 20), tile=10, on_tile=stop_at_second)


def test_other_state_dicts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotEsrgan, match=r"conv_first\.weight"):
        rrdb_state({"linear.weight": torch.zeros(2, 2)})
    state = net_of(TINY).state_dict()
    state["conv_first.weight"] = torch.zeros(8, 5, 3, 3)  # 5 input channels: no unshuffle of 3 colours
    with pytest.raises(NotEsrgan, match="5 channels"):
        rrdb_state(state)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(NotEsrgan):
        read_state_dict(tmp_path / "list.pth")
    (tmp_path / "two").mkdir()
    for name in ("a.pth", "b.safetensors"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(NotEsrgan, match=r"a\.pth, b\.safetensors"):
        weights_file(tmp_path / "two")


def test_a_lone_esrgan_file_or_its_folder_is_an_upscaler(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = net_of(TINY).state_dict()
    folder = tmp_path / "anime"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "RealESRGAN_x4plus_anime_6B.safetensors"))
    torch.save({"params_ema": state}, tmp_path / "RealESRGAN_x4plus.pth")
    for path in (folder, folder / "RealESRGAN_x4plus_anime_6B.safetensors", tmp_path / "RealESRGAN_x4plus.pth"):
        inferred = infer_model(path)
        assert (inferred.kind, inferred.engine) == (ModelKind.UPSCALER, ESRGAN_ENGINE), path
        assert "RRDBNet" in inferred.evidence
    # Named by the operator, the kind still runs on the engine its files need.
    assert infer_model(folder, ModelKind.UPSCALER).engine == ESRGAN_ENGINE
    # Other single weights files still say nothing of their kind.
    save_file({"linear.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    torch.save({"linear.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    for name in ("other.safetensors", "other.pth"):
        with pytest.raises(UnrecognizedModel, match="says nothing of its kind"):
            infer_model(tmp_path / name)
