"""A tiny random LTX-Video model for the demo catalog and tests: `demo-ltx`, one folder served
for text-to-video (LTXPipeline) and, as `demo-ltx-i2v`, image-to-video (LTXImageToVideoPipeline):
both pipelines take the same parts, so one build serves both.

The VAE keeps LTX-Video's real compression (x32 in space: three x2 stages and 4x4 patches; x8
in time) so the family's rules (frames 8k+1, sides multiples of 32) hold for the demo as for
the released checkpoints. Seeded: every build is identical.
"""

from __future__ import annotations

from pathlib import Path

from engines.base import ModelKind, ModelSpec
from engines.video.t5_demo import t5_char_tokenizer

LTX_MODEL = "demo-ltx"
LTX_I2V_MODEL = "demo-ltx-i2v"

_TEXT_WIDTH = 32
_MAX_PROMPT_TOKENS = 64
_LATENT_CHANNELS = 8


def build_ltx(out: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    tokenizer = t5_char_tokenizer(_MAX_PROMPT_TOKENS)
    text_encoder = T5EncoderModel(
        T5Config(
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
    stages = 4
    vae = AutoencoderKLLTXVideo(
        latent_channels=_LATENT_CHANNELS,
        block_out_channels=(8,) * stages,
        decoder_block_out_channels=(8,) * stages,
        layers_per_block=(1,) * (stages + 1),
        decoder_layers_per_block=(1,) * (stages + 1),
        # LTX-Video 0.9's layout: three space-time x2 stages, then 4x4 patches.
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False,) * (stages + 1),
        upsample_residual=(False,) * stages,
        upsample_factor=(1,) * stages,
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=_LATENT_CHANNELS,
        out_channels=_LATENT_CHANNELS,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=_TEXT_WIDTH,
    )
    # LTX-Video's scheduler: flow matching with a resolution-dependent shift.
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024, max_image_seq_len=4096
    )
    LTXPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, scheduler=scheduler
    ).save_pretrained(out)


# As for the Wan demo: 64x64, 9 frames (8k+1) at 8 a second, two steps.
_DEMO_OPTIONS = {"width": 64, "height": 64, "frames": 9, "fps": 8, "steps": 2}
LTX_BUILDERS = {LTX_MODEL: build_ltx}


def ltx_demo_specs(root: Path) -> list[ModelSpec]:
    path = str(root / LTX_MODEL)
    return [
        ModelSpec(name=LTX_MODEL, kind=ModelKind.VIDEO, engine="diffusers", path=path, options=_DEMO_OPTIONS),
        # The same folder through the image-to-video pipeline.
        ModelSpec(
            name=LTX_I2V_MODEL,
            kind=ModelKind.VIDEO,
            engine="diffusers",
            path=path,
            options={**_DEMO_OPTIONS, "pipeline": "LTXImageToVideoPipeline"},
        ),
    ]
