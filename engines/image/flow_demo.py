"""Tiny random flow-matching image models for the demo catalog and tests, built locally in seconds.

`demo-flux` is a FLUX.1 [schnell] layout (CLIP and T5 text encoders, an MMDiT without guidance
embedding, packed 2x2 latents), `demo-sd3` a Stable Diffusion 3.5 layout (two CLIP encoders with
projection and a T5), `demo-qwen-image` a Qwen-Image layout (a Qwen2.5-VL text encoder and the
Qwen-Image causal VAE). Every VAE keeps the real x8 latent scale, so the families' size rule
(multiples of 16) is the real one. The tokenizers are built here, from no files at all: CLIP's and
Qwen2's are byte-level BPEs without merges, T5's a Unigram over printable characters. Weights are
random but seeded, so every build is identical and pixel comparisons between runs mean something.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from engines.base import ModelKind, ModelSpec
from engines.image.families import FlowFamily

FLUX_MODEL = "demo-flux"
# The model ids of Novita's fixed routes, which serve the catalog entry so named (or aliased).
FLUX_SCHNELL_ROUTE_MODEL = "flux-1-schnell"
QWEN_IMAGE_ROUTE_MODEL = "qwen-image"
SD3_MODEL = "demo-sd3"
QWEN_IMAGE_MODEL = "demo-qwen-image"

_HIDDEN = 32  # text encoder width
_T5_WIDTH = 64  # SD3 pads the two CLIP widths (2 x 32) to T5's


def _clip_tokenizer() -> Any:
    from engines.image.demo import _clip_tokenizer as clip  # demo.py imports this module

    return clip()


def _t5_tokenizer() -> Any:
    """A T5 (Unigram) tokenizer whose pieces are single printable characters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(char, -2.0) for char in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _t5_encoder(tokenizer: Any, width: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def _clip_config(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _flow_vae(latent_channels: int) -> Any:
    from diffusers import AutoencoderKL

    # FLUX's and SD3's VAE: no quant convs, a shift factor; four blocks keep the x8 scale.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def _flow_scheduler(**extra: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **extra)


def _build_flux(out: Path) -> None:
    build_flux(out)


def build_flux(out: Path, *, layers: int = 1, single_layers: int = 1, heads: int = 2, head_dim: int = 16) -> None:
    """A FLUX.1 schnell layout at `out`; the defaults are demo-flux, larger ones suit a benchmark."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    clip = _clip_tokenizer()
    t5 = _t5_tokenizer()
    latent_channels = 4
    pipe = FluxPipeline(
        # schnell's scheduler: a fixed shift of 1, no resolution-dependent shifting.
        scheduler=_flow_scheduler(shift=1.0, use_dynamic_shifting=False),
        vae=_flow_vae(latent_channels),
        text_encoder=CLIPTextModel(_clip_config(clip)),
        tokenizer=clip,
        text_encoder_2=_t5_encoder(t5, _HIDDEN),
        tokenizer_2=t5,
        transformer=FluxTransformer2DModel(
            patch_size=1,
            in_channels=latent_channels * 4,  # latents are packed 2x2 into tokens
            num_layers=layers,
            num_single_layers=single_layers,
            attention_head_dim=head_dim,
            num_attention_heads=heads,
            joint_attention_dim=_HIDDEN,
            pooled_projection_dim=_HIDDEN,
            axes_dims_rope=(head_dim // 4, head_dim // 4, head_dim // 2),
            guidance_embeds=False,  # schnell: guidance-distilled away
        ),
    )
    pipe.save_pretrained(out)


def _build_sd3(out: Path) -> None:
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    clip = _clip_tokenizer()
    t5 = _t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,  # SD3's 16 latent channels: its inpainting pipeline asks for them
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=_T5_WIDTH,
            pooled_projection_dim=2 * _HIDDEN,
            out_channels=16,
            qk_norm="rms_norm",  # an SD 3.5 layout
        ),
        scheduler=_flow_scheduler(shift=3.0),
        vae=_flow_vae(16),
        text_encoder=CLIPTextModelWithProjection(_clip_config(clip)),
        tokenizer=clip,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(clip)),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(t5, _T5_WIDTH),
        tokenizer_3=t5,
    )
    pipe.save_pretrained(out)


_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")


def _qwen_tokenizer() -> Any:
    """Qwen2's byte-level BPE with no merges (every byte one token) and the chat template's specials."""
    from transformers import Qwen2Tokenizer

    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]
    tokenizer = Qwen2Tokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(_QWEN_SPECIALS[1:])})
    tokenizer.add_special_tokens({"eos_token": _QWEN_SPECIALS[0], "pad_token": _QWEN_SPECIALS[0]})
    return tokenizer


def _build_qwen_image(out: Path) -> None:
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = _qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    width = 16
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": width,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|endoftext|>"),
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": width,
        },
        hidden_size=width,
        vocab_size=len(tokenizer),
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|endoftext|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vision_token_id=ids("<|image_pad|>"),
        image_token_id=ids("<|image_pad|>"),
    )
    z_dim = 4
    pipe = QwenImagePipeline(
        scheduler=_flow_scheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9),
        vae=AutoencoderKLQwenImage(
            base_dim=z_dim * 6,
            z_dim=z_dim,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],  # three downsamples: the real x8 scale
            latents_mean=[0.0] * z_dim,
            latents_std=[1.0] * z_dim,
        ),
        text_encoder=Qwen2_5_VLForConditionalGeneration(config),
        tokenizer=tokenizer,
        transformer=QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=z_dim * 4,
            out_channels=z_dim,
            num_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=width,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        ),
    )
    pipe.save_pretrained(out)


BUILDERS = {FLUX_MODEL: _build_flux, SD3_MODEL: _build_sd3, QWEN_IMAGE_MODEL: _build_qwen_image}
_FAMILIES = {FLUX_MODEL: FlowFamily.FLUX_SCHNELL, SD3_MODEL: FlowFamily.SD35, QWEN_IMAGE_MODEL: FlowFamily.QWEN_IMAGE}
_ALIASES = {FLUX_MODEL: [FLUX_SCHNELL_ROUTE_MODEL], QWEN_IMAGE_MODEL: [QWEN_IMAGE_ROUTE_MODEL]}


def catalog(root: Path) -> list[ModelSpec]:
    """The flow demo specs under `root`; the aliases let Novita's fixed routes find them."""
    return [
        ModelSpec(
            name=name,
            kind=ModelKind.IMAGE,
            engine="diffusers",
            path=str(Path(root) / name),
            options={"family": family.value},
            aliases=_ALIASES.get(name, []),
        )
        for name, family in _FAMILIES.items()
    ]
