"""A tiny random image-variation pipeline (`demo-reimagine`) for the demo catalog and tests, built in seconds.

A Stable unCLIP image-to-image layout, as stabilityai/stable-diffusion-2-1-unclip-small has: a
CLIP vision tower embeds the input image, the embedding is noised and normalised and then
conditions an SD UNet through its class embedding (`class_embed_type="projection"`), beside the
text encoder's (empty) prompt. The SD parts follow engines/image/demo.py's (tokenizer built
without downloads, VAE at the real x8 scale). Weights are random but seeded, so every build is
identical and the same seed gives the same pixels.
"""

from __future__ import annotations

from pathlib import Path

VARIATION_MODEL = "demo-reimagine"
_EMBED_DIM = 32  # the image embedding's width; the UNet takes it beside its noise-level embedding


def build_variation(out: Path) -> None:
    import torch
    import transformers
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from engines.image.demo import _clip_tokenizer, _text_config, _unet, _vae

    torch.manual_seed(0)  # same weights on every build
    tokenizer = _clip_tokenizer()
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=_EMBED_DIM,
        )
    )
    # The PIL processor where transformers has one: the default wants torchvision and warns without it.
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    feature_extractor = processor_class(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=feature_extractor,
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=_EMBED_DIM),
        # The real checkpoints' schedule for noising the image embedding.
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        # The class embedding takes the noised image embedding and its noise level's embedding.
        unet=_unet(class_embed_type="projection", projection_class_embeddings_input_dim=2 * _EMBED_DIM),
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
            clip_sample=False,
        ),
        vae=_vae(),
    )
    pipe.save_pretrained(out)
