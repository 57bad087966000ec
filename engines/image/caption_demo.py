"""A tiny random image captioner (`demo-captioner`) for the demo catalog and tests, built in a second.

A BLIP layout, as Salesforce/blip-image-captioning-large has: a ViT vision tower whose patch
features a BERT-style text decoder cross-attends to, with BLIP's processor (image processor and
a WordPiece tokenizer). The tokenizer's vocabulary is written here from a short word list, so
nothing is downloaded; any text still encodes (unknown words become [UNK]). Weights are random
but seeded: the captions are arbitrary words, identical on every build. Building follows
engines/demo.py (engines/image/demo.py lists the builder).
"""

from __future__ import annotations

from pathlib import Path

CAPTION_MODEL = "demo-captioner"
IMAGE_SIDE = 32

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
# Words a caption of a picture might use; what the random decoder picks among.
_WORD_TEXT = """a an the of in on with and at near photo picture painting drawing image portrait
landscape red green blue yellow white black grey orange purple pink brown dark bright small large
cat dog bird horse man woman child people tree trees flower flowers sky cloud clouds sea ocean
river lake mountain mountains city street house building car boat road field forest beach snow
sun night day light sitting standing walking flying close up view style detailed colorful old new
, .
"""
_WORDS = _WORD_TEXT.split()


def build_captioner(out: Path) -> None:
    import torch
    import transformers
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipProcessor,
    )

    torch.manual_seed(0)  # same weights on every build
    vocab = [*_SPECIALS, *_WORDS]
    tokenizer = BertTokenizer(
        vocab={token: index for index, token in enumerate(vocab)}, bos_token="[DEC]", model_max_length=64
    )
    ids = {token: vocab.index(token) for token in _SPECIALS}
    config = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIDE,
            "patch_size": 8,
        },
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            # BLIP starts a caption with [DEC] and ends it at [SEP], as the real checkpoints do.
            "bos_token_id": ids["[DEC]"],
            "sep_token_id": ids["[SEP]"],
            "eos_token_id": ids["[SEP]"],
            "pad_token_id": ids["[PAD]"],
        },
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).save_pretrained(out)
    # The PIL processor where transformers has one: the default wants torchvision and warns without it.
    image_processor_class = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
    image_processor = image_processor_class(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
