"""Tiny random video models for the demo catalog and tests, built locally in seconds.

`demo-animatediff` is an SD 1.x layout (one CLIP text encoder) with an AnimateDiff motion adapter
beside it, a LoRA and a textual-inversion embedding; `demo-svd` is a Stable Video Diffusion
layout (temporal UNet and VAE decoder, CLIP image encoder). The Wan and LTX-Video demo models are
built by their own modules (wan_demo.py, ltx_demo.py) and listed here. Weights are random but seeded, so
every build is identical and frame comparisons between runs are meaningful. Each model is
assembled in a hidden sibling folder and renamed into place with a marker written last
(engines/model_build.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.base import ModelKind, ModelSpec
from engines.model_build import build_atomically
from engines.video.ltx_demo import LTX_BUILDERS, ltx_demo_specs
from engines.video.wan_demo import WAN_BUILDERS, wan_demo_specs

# Changing a recipe below? Bump this: a marker with another text triggers a rebuild.
BUILD_VERSION = "omniserve-video-demo-1"

ANIMATEDIFF_MODEL = "demo-animatediff"
SVD_MODEL = "demo-svd"
LORA_NAME = "demo-video-lora"
EMBEDDING_NAME = "demo-video-embedding"
_ADAPTER_DIR = "motion_adapter"
_LORA_FILE = f"loras/{LORA_NAME}.safetensors"
_EMBEDDING_FILE = f"embeddings/{EMBEDDING_NAME}.safetensors"

# Frames the demo motion modules attend over at once. Small on purpose: longer videos then
# take the sliding-window path (FreeNoise) in tests, as 16-frame adapters do past 16 frames.
DEMO_CONTEXT_FRAMES = 8
# The demo SVD's native size (CROP_TO_ASPECT_RATIO crops to this); 3:2 like a small landscape.
DEMO_SVD_SIZE = (96, 64)
_HIDDEN = 32


def _text_parts() -> tuple[Any, Any]:
    # The image demo's character-level CLIP tokenizer and text config: any text encodes.
    from transformers import CLIPTextModel

    from engines.image.demo import _clip_tokenizer, _text_config

    tokenizer = _clip_tokenizer()
    return tokenizer, CLIPTextModel(_text_config(tokenizer))


def _build_animatediff(out: Path) -> None:
    import torch
    from diffusers import (
        AnimateDiffPipeline,
        AutoencoderKL,
        DDIMScheduler,
        MotionAdapter,
        StableDiffusionPipeline,
        UNet2DConditionModel,
        UNetMotionModel,
    )
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(0)  # same weights on every build
    tokenizer, text_encoder = _text_parts()
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        norm_num_groups=4,
        cross_attention_dim=_HIDDEN,
    )
    # Motion modules match the UNet block for block; its width, groups and layers must agree.
    adapter = MotionAdapter(
        block_out_channels=(16, 32),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=4,
        motion_max_seq_length=32,
    )
    # Four VAE blocks keep the real x8 latent scale, so size rules match real checkpoints.
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    # The schedule SD 1.5 was trained on; the engine samples it with DDIM as AnimateDiff does.
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    # Saved as an SD checkpoint plus the adapter, the way they are published: the engine puts
    # them together (AnimateDiffPipeline.from_pretrained(checkpoint, motion_adapter=...)).
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(out)
    adapter.save_pretrained(out / _ADAPTER_DIR)

    # A LoRA on the spatial attention projections, random (not zero) so it visibly changes output.
    pipe = AnimateDiffPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=UNetMotionModel.from_unet2d(unet, adapter),
        motion_adapter=adapter,
        scheduler=scheduler,
    )
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    (out / "loras").mkdir()
    # Only the spatial layers: the LoRA then fits the plain SD UNet as image LoRAs do.
    layers = {k: v for k, v in get_peft_model_state_dict(pipe.unet).items() if "motion_modules" not in k}
    AnimateDiffPipeline.save_lora_weights(out / "loras", unet_lora_layers=layers, safe_serialization=True)
    (out / "loras" / "pytorch_lora_weights.safetensors").rename(out / _LORA_FILE)
    # Textual inversion in A1111's layout ("emb_params", one row per vector).
    (out / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, _HIDDEN)}, str(out / _EMBEDDING_FILE))


def _build_svd(out: Path) -> None:
    import torch
    import transformers
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    time_embed_dim = 8
    # The PIL processor where transformers has one: the default wants torchvision and warns without it.
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    pipe = StableVideoDiffusionPipeline(
        # The temporal decoder's norms use 32 groups; four blocks keep the x8 latent scale.
        vae=AutoencoderKLTemporalDecoder(
            block_out_channels=(32, 32, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
        ),
        # The pipeline resizes the conditioning image to 224x224 before encoding it.
        image_encoder=CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=_HIDDEN,
                projection_dim=_HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
                image_size=224,
                patch_size=32,
            )
        ),
        # Latents and the encoded conditioning image side by side (4 + 4 channels); the added
        # embedding carries fps, motion bucket and noise augmentation, embedded each.
        unet=UNetSpatioTemporalConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            in_channels=8,
            out_channels=4,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            cross_attention_dim=_HIDDEN,
            num_attention_heads=(2, 4),
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=3 * time_embed_dim,
            num_frames=14,
        ),
        # What SVD ships: Euler on continuous timesteps, v-prediction, Karras sigmas.
        scheduler=EulerDiscreteScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            interpolation_type="linear",
            num_train_timesteps=1000,
            prediction_type="v_prediction",
            sigma_max=700.0,
            sigma_min=0.002,
            steps_offset=1,
            timestep_spacing="leading",
            timestep_type="continuous",
            use_karras_sigmas=True,
        ),
        feature_extractor=processor_class(crop_size=224, size=224),
    )
    pipe.save_pretrained(out)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    ANIMATEDIFF_MODEL: _build_animatediff,
    SVD_MODEL: _build_svd,
    **WAN_BUILDERS,
    **LTX_BUILDERS,
}


def video_demo_catalog(root: Path) -> list[ModelSpec]:
    """The video demo specs; built models live under `root` (see `build_video_demo_models`)."""
    root = Path(root)
    animatediff = root / ANIMATEDIFF_MODEL
    return [
        ModelSpec(
            name=ANIMATEDIFF_MODEL,
            kind=ModelKind.VIDEO,
            engine="diffusers",
            path=str(animatediff),
            options={
                "motion_adapter": str(animatediff / _ADAPTER_DIR),
                "context_frames": DEMO_CONTEXT_FRAMES,
                # Few frames a second keeps an OpenAI request of one second at a handful of frames,
                # and two steps (for OpenAI requests, which name none) are enough for random weights.
                "fps": 4,
                "steps": 2,
                "loras": {LORA_NAME: str(animatediff / _LORA_FILE)},
                "embeddings": {EMBEDDING_NAME: str(animatediff / _EMBEDDING_FILE)},
            },
        ),
        ModelSpec(
            name=SVD_MODEL,
            kind=ModelKind.VIDEO,
            engine="diffusers",
            path=str(root / SVD_MODEL),
            options={"width": DEMO_SVD_SIZE[0], "height": DEMO_SVD_SIZE[1], "fps": 4, "steps": 2},
        ),
        *wan_demo_specs(root),
        *ltx_demo_specs(root),
    ]


def build_video_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    """Build missing (or, with `force`, all) video demo models under `root`; return the specs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, builder in _BUILDERS.items():
        build_atomically(root / name, builder, BUILD_VERSION, force=force)
    specs = video_demo_catalog(root)
    for spec in specs:
        if not Path(spec.path, "model_index.json").is_file():
            raise FileNotFoundError(f"{spec.name}: no model at {spec.path}")
    return specs


if __name__ == "__main__":
    import sys

    for s in build_video_demo_models(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-models")):
        print(f"{s.name}\t{s.kind}\t{s.path}")
