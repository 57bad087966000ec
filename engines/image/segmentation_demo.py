"""The demo segmenter: a tiny random SegFormer with the labels "background" and "foreground".

Its masks are noise, nowhere near a real subject's outline; the model exists so that background
removal runs end to end (load, preprocess, segment, alpha mask at the image's size) without a
download. A real deployment names briaai/RMBG-1.4 or a SegFormer fine-tuned for foreground
(README, "Image tools").
"""

from __future__ import annotations

import json
from pathlib import Path

from engines.base import ModelKind, ModelSpec

SEGMENTATION_MODEL = "demo-segmenter"
SEGMENTATION_LABELS = ["background", "foreground"]


def build_demo_segmenter(out: Path) -> None:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)  # same weights on every build
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        id2label=dict(enumerate(SEGMENTATION_LABELS)),
        label2id={label: index for index, label in enumerate(SEGMENTATION_LABELS)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(out)
    # The input convention in transformers' own file, as a real SegFormer folder carries it
    # (transformers' SegFormer processor itself needs torchvision, so it is written by hand).
    processor = {
        "image_processor_type": "SegformerImageProcessor",
        "size": {"height": 64, "width": 64},
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_resize": True,
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def demo_segmenter_spec(root: Path) -> ModelSpec:
    """Its catalog entry; the folder is built under ``root`` by engines/image/demo.py."""
    return ModelSpec(
        name=SEGMENTATION_MODEL, kind=ModelKind.SEGMENTATION, engine="transformers", path=str(root / SEGMENTATION_MODEL)
    )
