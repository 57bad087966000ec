"""A tiny random vision-language model for the demo catalog and tests, built locally in seconds.

`demo-vlm` is an Idefics3 (SmolVLM) layout: a SigLIP-style vision tower whose patch features are
pixel-shuffled and projected into a Llama decoder's embedding space, in place of the `<image>`
placeholder tokens. vLLM on CPU loads it without torchvision (its Qwen2-VL and LLaVA code import
torchvision, which has no CPU build among the registries here). Images are resized to at most
56x56 pixels, without Idefics3's tiling: 16 patches of 14 pixels, shuffled 2x2 into 4 image
tokens plus 3 markers, so an image costs 7 prompt tokens. Weights are random but seeded, so
answers are useless yet identical on every build. Building follows engines/demo.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engines.base import ModelKind, ModelSpec
from engines.model_build import build_atomically

# Changing the recipe below? Bump this: a marker with another text triggers a rebuild.
BUILD_VERSION = "omniserve-vision-demo-2"

VLM_NAME = "demo-vlm"
_KV_BYTES = 64 * 1024 * 1024  # as the other demo models: default KV sizing fails on small CPU machines

# The vision tower's input side, patch size and pixel-shuffle factor: (56 / 14) ** 2 / 2 ** 2 = 4.
IMAGE_SIDE = 56
_PATCH = 14
_SHUFFLE = 2
IMAGE_SEQ_LEN = (IMAGE_SIDE // _PATCH) ** 2 // _SHUFFLE**2

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Training text for the tokenizer: the words image questions use. Byte-level, so any text encodes.
_TEXT = """\
What is in this picture? Describe the image. The photo shows a red square on a white background.
A cat sits on a blue chair near the window; the sky is grey and the trees are green.
How many people are there? Two children play with a yellow ball in the park at noon.
Read the text in the image. The sign says: open from 9 to 5, Monday to Friday.
"""
# Idefics3's processor looks every one of these up: marker tokens and the (unused) tile tags.
_IMAGE_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]

# ChatML with image parts: each becomes one <image>, which the processor (vLLM's, at request
# time) widens to the image's markers and tokens. Newlines are Jinja string literals because
# transformers renders with trim_blocks/lstrip_blocks, which would eat literal ones after tags.
_CHAT_TEMPLATE = "".join(
    (
        "{%- for m in messages -%}",
        "{{- '<|im_start|>' + m.role + '\\n' -}}",
        "{%- if m.content is string -%}{{- m.content -}}",
        "{%- elif m.content -%}{%- for p in m.content -%}",
        "{%- if p.type == 'text' -%}{{- p.text -}}",
        "{%- elif p.type == 'image' or p.type == 'image_url' -%}{{- '<image>' -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{{- '<|im_end|>\\n' -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
    )
)


def _tokenizer() -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any UTF-8 text round-trips
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT.splitlines(), trainer)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in _IMAGE_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def _build_vlm(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3 import Idefics3ImageProcessorPil, Idefics3Processor

    tokenizer = _tokenizer()
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    text = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # head_dim 32: vLLM's CPU attention rejects 16
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": None,
        "eos_token_id": im_end,
        "pad_token_id": endoftext,
        "tie_word_embeddings": True,
    }
    vision = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIDE,
        "patch_size": _PATCH,
    }
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=_SHUFFLE,
        pad_token_id=endoftext,
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(0)  # same weights on every build
    Idefics3ForConditionalGeneration(config).save_pretrained(out)
    GenerationConfig(eos_token_id=[im_end, endoftext], pad_token_id=endoftext).save_pretrained(out)
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False,  # one 56x56 view per image, no tiles
        size={"longest_edge": IMAGE_SIDE},
        max_image_size={"longest_edge": IMAGE_SIDE},
    )
    processor = Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=_CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)


def vision_demo_catalog(root: Path) -> list[ModelSpec]:
    return [
        ModelSpec(
            name=VLM_NAME,
            kind=ModelKind.CHAT,
            path=str(Path(root) / VLM_NAME),
            options={
                "dtype": "float32",
                "enforce_eager": True,  # no compile/graph capture: start in seconds
                "kv_cache_memory_bytes": _KV_BYTES,
                "max_model_len": 512,
                # Images per prompt vLLM sizes its encoder cache for: as many as a chat request
                # may carry by default (limits.max_chat_images); more are refused by vLLM.
                "limit_mm_per_prompt": {"image": 8},
            },
        )
    ]


def build_vision_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    """Build the vision demo model under `root` when missing (or with `force`); return its spec."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    build_atomically(root / VLM_NAME, _build_vlm, BUILD_VERSION, force=force)
    return vision_demo_catalog(root)


if __name__ == "__main__":
    import sys

    for s in build_vision_demo_models(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-models")):
        print(f"{s.name}\t{s.kind}\t{s.path}")
