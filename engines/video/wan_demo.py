"""Tiny random Wan 2.1 models for the demo catalog and tests: `demo-wan` (text-to-video) and
`demo-wan-i2v` (image-to-video), built locally in about a second each.

Both share the recipe of the parts they have in common (UMT5 text encoder, Wan VAE, flow
matching scheduler) and are seeded, so every build is identical. The VAE keeps Wan's real
compression (x8 in space, x4 in time) and the transformer its 1x2x2 patches: the family's rules
(frames 4k+1, sides multiples of 16) hold for the demo as for the released checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.base import ModelKind, ModelSpec
from engines.video.t5_demo import t5_char_tokenizer

WAN_MODEL = "demo-wan"
WAN_I2V_MODEL = "demo-wan-i2v"

_TEXT_WIDTH = 32
_MAX_PROMPT_TOKENS = 64
_LATENT_CHANNELS = 16  # Wan 2.1's VAE latent channels (the transformer's input for text-to-video)
_IMAGE_WIDTH = 4  # the CLIP image embedding width of the image-to-video transformer


def _shared_parts() -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = t5_char_tokenizer(_MAX_PROMPT_TOKENS)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=_TEXT_WIDTH,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    # Three temporal downsamplings of four would be x8; Wan downsamples time in the last two (x4).
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=_LATENT_CHANNELS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    # Wan samples with flow matching; shift 3.0 is what the 480p checkpoints ship with.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "scheduler": scheduler}


def _transformer(in_channels: int, image_dim: int | None = None) -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=_LATENT_CHANNELS,
        text_dim=_TEXT_WIDTH,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        # Rotary tables for up to 1024 patches a side: any size the routes take (2x2 patches).
        rope_max_seq_len=1024,
        image_dim=image_dim,
    )


def build_wan(out: Path) -> None:
    from diffusers import WanPipeline

    parts = _shared_parts()
    WanPipeline(transformer=_transformer(_LATENT_CHANNELS), **parts).save_pretrained(out)


def build_wan_i2v(out: Path) -> None:
    import transformers
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPVisionConfig, CLIPVisionModel

    parts = _shared_parts()
    # Wan 2.1's image-to-video input: the noise latents, a first-frame mask (4 channels) and the
    # encoded conditioning video, side by side; the CLIP image embedding goes to cross-attention.
    transformer = _transformer(2 * _LATENT_CHANNELS + 4, image_dim=_IMAGE_WIDTH)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=_IMAGE_WIDTH,
            projection_dim=_IMAGE_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=1,
        )
    )
    # The PIL processor where transformers has one: the default wants torchvision.
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    WanImageToVideoPipeline(
        transformer=transformer,
        image_encoder=image_encoder,
        image_processor=processor_class(crop_size=32, size=32),
        **parts,
    ).save_pretrained(out)


# Few frames a second and two steps keep an OpenAI request of one second at 9 frames (the
# nearest 4k+1 to 8) and a job at a fraction of a second; 64x64 is the smallest side the
# video routes take.
_DEMO_OPTIONS = {"width": 64, "height": 64, "frames": 9, "fps": 8, "steps": 2}
WAN_BUILDERS = {WAN_MODEL: build_wan, WAN_I2V_MODEL: build_wan_i2v}


def wan_demo_specs(root: Path) -> list[ModelSpec]:
    return [
        ModelSpec(name=name, kind=ModelKind.VIDEO, engine="diffusers", path=str(root / name), options=_DEMO_OPTIONS)
        for name in WAN_BUILDERS
    ]
