"""Tiny random image models for the demo catalog and tests, built locally in a few seconds.

`demo-sd` is an SD 1.x layout (one CLIP text encoder) and carries a LoRA, a textual-inversion
embedding and a ControlNet made for it; `demo-sdxl` is an SDXL layout (two text encoders, pooled
text-time conditioning) with a refiner (an SDXL img2img layout with only the second text encoder
and aesthetic-score conditioning, as real refiners have); both list the spare VAE `demo-vae`.
`demo-upscaler` is a Stable Diffusion x4 upscaler layout (engines/image/upscale.py);
`demo-esrgan` an RRDBNet (engines/image/esrgan_demo.py), also demo-sd's hires-fix ESRGAN upscaler;
`demo-flux`, `demo-sd3` and `demo-qwen-image` are the flow-matching families (engines/image/flow_demo.py);
`demo-nsfw` is a ViT image classifier with the labels that NSFW detection levels
expect (engines/image/safety.py). Weights are random but seeded, so every build is identical and
pixel comparisons between runs are meaningful. Building follows engines/demo.py: each model is
assembled in a hidden sibling directory and renamed into place with a marker written last.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.base import ModelKind, ModelSpec
from engines.image import flow_demo
from engines.image.caption_demo import CAPTION_MODEL, build_captioner
from engines.image.esrgan_demo import ESRGAN_DEMO_FILE, ESRGAN_DEMO_MODEL, build_esrgan_demo
from engines.image.segmentation_demo import SEGMENTATION_MODEL, build_demo_segmenter, demo_segmenter_spec
from engines.image.variation_demo import VARIATION_MODEL, build_variation
from engines.model_build import build_atomically

# Changing a recipe below? Bump this: a marker with another text triggers a rebuild.
BUILD_VERSION = "omniserve-image-demo-2"

LORA_NAME = "demo-lora"
EMBEDDING_NAME = "demo-embedding"
_LORA_FILE = f"loras/{LORA_NAME}.safetensors"
_EMBEDDING_FILE = f"embeddings/{EMBEDDING_NAME}.safetensors"

VAE_NAME = "demo-vae"
CONTROLNET_NAME = "demo-controlnet"
_REFINER_DIR = "demo-sdxl-refiner"

SAFETY_MODEL = "demo-nsfw"
UPSCALER_MODEL = "demo-upscaler"
SAFETY_LABELS = ["normal", "swimwear", "suggestive", "explicit"]

_HIDDEN = 32  # text encoder width; the UNet's cross-attention width follows it
_TEXT_LAYERS = 4  # enough layers for clip_skip up to 4 to mean something


def _clip_tokenizer() -> Any:
    """CLIP's byte-level BPE with no merges: every character is one token, any text encodes."""
    from transformers import CLIPTokenizer

    # GPT-2's byte-to-symbol table: printable bytes stand for themselves, the rest move to U+0100 on.
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]
    # CLIP marks the last symbol of each word with "</w>", so both forms are needed (514 entries).
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _text_config(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=_TEXT_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        # The pooled output is read at the first eos token; a wrong id would pool position 0.
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKL

    # Four blocks keep the real x8 latent scale, so width/height rules match real checkpoints.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def _unet(**extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        norm_num_groups=4,
        **{"cross_attention_dim": _HIDDEN, **extra},
    )


def _sd15_scheduler_config() -> dict[str, Any]:
    # What SD 1.5 ships: PNDM on the scaled-linear schedule.
    return {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
    }


def _build_sd(out: Path) -> None:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    torch.manual_seed(0)  # same weights on every build
    tokenizer = _clip_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=PNDMScheduler(**_sd15_scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)

    # A LoRA on the UNet's attention projections. Random (not zero) B matrices, so that it
    # visibly changes the output at strength 1 and a test can tell it is applied.
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    (out / "loras").mkdir()
    # save_lora_weights writes one file into a directory; rename it to the catalog's name.
    StableDiffusionPipeline.save_lora_weights(
        out / "loras", unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True
    )
    (out / "loras" / "pytorch_lora_weights.safetensors").rename(out / _LORA_FILE)

    # Textual inversion in A1111's safetensors layout ("emb_params", one row per vector); two
    # vectors so the multi-vector expansion is exercised too.
    (out / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, _HIDDEN)}, str(out / _EMBEDDING_FILE))


def _build_sdxl(out: Path) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    config = _text_config(tokenizer)
    time_embed_dim = 8
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(config),
        text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tokenizer,
        tokenizer_2=_clip_tokenizer(),
        # Cross-attention sees both encoders side by side; the added embedding gets the pooled
        # text (projection_dim) plus six micro-conditioning numbers (sizes, crop) embedded each.
        unet=_unet(
            cross_attention_dim=2 * _HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + _HIDDEN,
            use_linear_projection=True,
        ),
        # What SDXL base ships: Euler on the same scaled-linear schedule.
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out)


def _build_sdxl_refiner(out: Path) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(1)  # other weights than the base: the refiner must visibly change its share
    time_embed_dim = 8
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=_vae(),
        text_encoder=None,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(_clip_tokenizer())),
        tokenizer=None,
        tokenizer_2=_clip_tokenizer(),
        # Only the second encoder's width for cross-attention; five micro-conditioning numbers
        # (sizes, crop, aesthetic score) instead of the base's six.
        unet=_unet(
            cross_attention_dim=_HIDDEN,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=5 * time_embed_dim + _HIDDEN,
            use_linear_projection=True,
        ),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )
    pipe.save_pretrained(out)


def _build_vae(out: Path) -> None:
    import torch

    torch.manual_seed(1)  # the same layout as the checkpoints' own VAE, other weights
    _vae().save_pretrained(out)


def _build_controlnet(out: Path) -> None:
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(2)
    controlnet = ControlNetModel.from_unet(_unet(), conditioning_embedding_out_channels=(8, 8, 16, 16))
    # A trained ControlNet starts from zero convolutions and learns them; left at zero, this one
    # would add nothing and no test could tell that it is applied.
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    for conv in [*zero_convs, controlnet.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(conv.weight, std=0.05)
    controlnet.save_pretrained(out)


def _build_upscaler(out: Path) -> None:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    # stabilityai/stable-diffusion-x4-upscaler's schedules: noise is added to the low-res image
    # with DDPM, and the UNet (v-prediction) is sampled with DDIM.
    schedule = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    pipe = StableDiffusionUpscalePipeline(
        # Three blocks: a x4 VAE, the real upscaler's native scale. 0.08333 is its latent scaling.
        vae=AutoencoderKL(
            block_out_channels=(8, 8, 16),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=128,
            scaling_factor=0.08333,
        ),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        tokenizer=tokenizer,
        # Latents and the noised low-res image side by side (4 + 3 channels); the noise level
        # is a class label, as in the real UNet.
        unet=UNet2DConditionModel(
            block_out_channels=(16, 32),
            layers_per_block=1,
            sample_size=32,
            in_channels=7,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            norm_num_groups=4,
            cross_attention_dim=_HIDDEN,
            num_class_embeds=1000,
        ),
        low_res_scheduler=DDPMScheduler(**schedule),
        scheduler=DDIMScheduler(
            **schedule, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        max_noise_level=350,
    )
    pipe.save_pretrained(out)


def _build_nsfw(out: Path) -> None:
    import torch
    import transformers
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    # Random weights: the scores are noise, nowhere near a real NSFW judgement. The model exists so
    # that detection runs end to end (load, preprocess, classify, level mapping) without a download.
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        id2label=dict(enumerate(SAFETY_LABELS)),
        label2id={label: index for index, label in enumerate(SAFETY_LABELS)},
    )
    ViTForImageClassification(config).save_pretrained(out)
    # The PIL processor where transformers has one: the default wants torchvision and warns without it.
    processor_class = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    processor_class(size={"height": 32, "width": 32}).save_pretrained(out)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "demo-sd": _build_sd,
    "demo-sdxl": _build_sdxl,
    _REFINER_DIR: _build_sdxl_refiner,
    VAE_NAME: _build_vae,
    CONTROLNET_NAME: _build_controlnet,
    SAFETY_MODEL: _build_nsfw,
    UPSCALER_MODEL: _build_upscaler,
    SEGMENTATION_MODEL: build_demo_segmenter,
    CAPTION_MODEL: build_captioner,
    VARIATION_MODEL: build_variation,
    ESRGAN_DEMO_MODEL: build_esrgan_demo,
}
_BUILDERS.update(flow_demo.BUILDERS)  # the flow-matching families (engines/image/flow_demo.py)


def image_demo_catalog(root: Path) -> list[ModelSpec]:
    """The image demo specs; built models live under `root` (see `build_image_demo_models`)."""
    root = Path(root)
    sd = root / "demo-sd"
    vaes = {VAE_NAME: str(root / VAE_NAME)}
    esrgan = str(root / ESRGAN_DEMO_MODEL / ESRGAN_DEMO_FILE)
    return [
        ModelSpec(
            name="demo-sd",
            kind=ModelKind.IMAGE,
            engine="diffusers",
            path=str(sd),
            options={
                "loras": {LORA_NAME: str(sd / _LORA_FILE)},
                "embeddings": {EMBEDDING_NAME: str(sd / _EMBEDDING_FILE)},
                "vaes": vaes,
                "controlnets": {CONTROLNET_NAME: str(root / CONTROLNET_NAME)},
                "upscalers": {"RealESRGAN_x4plus_anime_6B": esrgan},
            },
        ),
        ModelSpec(
            name="demo-sdxl",
            kind=ModelKind.IMAGE,
            engine="diffusers",
            path=str(root / "demo-sdxl"),
            options={"refiner": str(root / _REFINER_DIR), "vaes": vaes},
        ),
        *flow_demo.catalog(root),
        # No options.levels: its labels are those of safety.DEFAULT_LEVELS.
        ModelSpec(name=SAFETY_MODEL, kind=ModelKind.SAFETY, engine="transformers", path=str(root / SAFETY_MODEL)),
        # Two steps instead of the real checkpoint's 20: random weights make no better picture with more.
        ModelSpec(
            name=UPSCALER_MODEL,
            kind=ModelKind.UPSCALER,
            engine="diffusers",
            path=str(root / UPSCALER_MODEL),
            options={"steps": 2},
        ),
        demo_segmenter_spec(root),
        # At least eight tokens: a random decoder may otherwise end its caption before any word.
        ModelSpec(
            name=CAPTION_MODEL,
            kind=ModelKind.CAPTION,
            engine="transformers",
            path=str(root / CAPTION_MODEL),
            options={"max_new_tokens": 16, "min_new_tokens": 8},
        ),
        # Two steps, as the upscaler: random weights make no better picture with more.
        ModelSpec(
            name=VARIATION_MODEL,
            kind=ModelKind.VARIATION,
            engine="diffusers",
            path=str(root / VARIATION_MODEL),
            options={"steps": 2},
        ),
        # Aliased with the model name of Novita's upscale example, so that request runs as documented.
        ModelSpec(
            name=ESRGAN_DEMO_MODEL,
            kind=ModelKind.UPSCALER,
            engine="esrgan",
            path=esrgan,
            aliases=["RealESRGAN_x4plus_anime_6B"],
        ),
    ]


def build_image_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    """Build missing (or, with `force`, all) image demo models under `root`; return the specs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, builder in _BUILDERS.items():
        build_atomically(root / name, builder, BUILD_VERSION, force=force)
    specs = image_demo_catalog(root)
    for spec in specs:
        pipelines = (ModelKind.IMAGE, ModelKind.UPSCALER, ModelKind.VARIATION)
        index = "model_index.json" if spec.kind in pipelines else "config.json"
        if not Path(spec.path, "" if spec.engine == "esrgan" else index).is_file():
            raise FileNotFoundError(f"{spec.name}: no model at {spec.path}")
    return specs


if __name__ == "__main__":
    import sys

    for s in build_image_demo_models(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-models")):
        print(f"{s.name}\t{s.kind}\t{s.path}")
