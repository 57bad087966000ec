"""What a model folder is, read from its own files: the kind it serves and the engine that runs it.

Only small JSON files are read (config.json, model_index.json, tokenizer_config.json, the
sentence-transformers files), never weights, so classifying a model costs milliseconds.

- model_index.json (a diffusers pipeline): its `_class_name` decides. Upscale pipelines are
  `upscaler`; video pipelines (AnimateDiff, Stable Video Diffusion, text-to-video, Wan...) and an
  SD 1.x checkpoint with a `motion_adapter/` folder beside its components are `video`; image-to-image
  and inpainting pipelines are refused (the image engine derives those from a text-to-image one),
  except Stable unCLIP's image-to-image, which is `variation`;
  every other pipeline is `image` (FLUX.1, SD3 and Qwen-Image ones with their `options.family`).
  A lone diffusers component (VAE, ControlNet) is refused.
- CTranslate2 Whisper (model.bin and a config.json with Whisper's decoding fields) is
  `transcription` on faster-whisper. Whisper in transformers form is refused: faster-whisper needs
  the CTranslate2 conversion, and the message says how to make it.
- A Coqui config (config.json naming a `model` with an `audio` section) is `speech` on Coqui TTS.
- A lone .pth or .safetensors file (or a folder holding only one) whose state-dict keys are an
  RRDBNet's is an ESRGAN-family `upscaler` on the `esrgan` engine (engines/image/esrgan.py); only
  the keys are read (a .safetensors header, a memory-mapped .pth).
- A transformers config.json: its `architectures` decide. A sequence classifier with one label
  (a cross-encoder) is `rerank`; a model with sentence-transformers files is `embedding`; a causal
  or conditional-generation language model is `chat` (with a `vision_config`, one that also takes
  images); BLIP, BLIP-2, GIT and vision encoder-decoder models are `caption`; an image classifier
  with NSFW labels is `safety`.

What fits none of these is refused with what was found, so an operator can name the kind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec

from engines.base import ModelKind
from engines.image.families import folder_family

# The engine that serves each kind when the catalog names none.
ENGINE_FOR_KIND: dict[ModelKind, str] = {
    ModelKind.CHAT: "vllm",
    ModelKind.EMBEDDING: "vllm",
    ModelKind.RERANK: "vllm",
    ModelKind.IMAGE: "diffusers",
    ModelKind.UPSCALER: "diffusers",
    ModelKind.VIDEO: "diffusers",
    ModelKind.SAFETY: "transformers",
    ModelKind.SEGMENTATION: "transformers",
    ModelKind.TRANSCRIPTION: "faster-whisper",
    ModelKind.SPEECH: "coqui",
    ModelKind.CAPTION: "transformers",
    ModelKind.VARIATION: "diffusers",
}
# The engine of ESRGAN-family upscalers (a weights file, not a diffusers pipeline).
ESRGAN_ENGINE = "esrgan"

# Files sentence-transformers writes beside a bi-encoder (embedding) model.
_SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# Fields of a CTranslate2 Whisper config.json that no other model's config has.
_CT2_WHISPER_FIELDS = ("alignment_heads", "suppress_ids", "suppress_ids_begin", "lang_ids")
_VIDEO_PIPELINE = re.compile(
    r"^(AnimateDiff|StableVideoDiffusion|TextToVideo|VideoToVideo|Wan|I2VGenXL|CogVideoX)|Video"
)
_MOTION_ADAPTER_DIR = "motion_adapter"
# Image-variation pipelines (engines/image/variation.py), served as such rather than refused as img2img.
_VARIATION_PIPELINES = frozenset({"StableUnCLIPImg2ImgPipeline"})
# Image captioners (engines/image/caption.py): encoder-decoder or BLIP-style image-to-text models.
_CAPTIONER = re.compile(r"^(Blip2?\w*ForConditionalGeneration|GitForCausalLM|VisionEncoderDecoderModel)$")
# A chat template's tool-call markup, and the vLLM tool parser that reads it.
_TOOL_MARKUP = (("<tool_call>", "hermes"), ("<|python_tag|>", "llama3_json"), ("[TOOL_CALLS]", "mistral"))
# Classifier labels (lower case) each NSFW detection level counts, cumulatively (engines/image/safety.py).
_NSFW_LABELS = (
    frozenset({"explicit", "nsfw", "porn", "hentai", "nudity", "nude"}),
    frozenset({"suggestive", "sexy"}),
    frozenset({"swimwear", "underwear", "bikini"}),
)
_LISTED_FILES = 12


class UnrecognizedModel(ValueError):
    """The files at a path are no model omniserve can classify (or serve); the message says what
    was found there."""


class InferredModel(msgspec.Struct, kw_only=True, frozen=True):
    kind: ModelKind
    engine: str
    # Catalog options the kind needs (vLLM's pooling runner, the NSFW levels, a motion adapter).
    options: dict[str, Any] = {}
    tool_parser: str | None = None
    # What decided it, for the startup log ("config.json architectures: LlamaForCausalLM").
    evidence: str = ""


def infer_model(path: Path, kind: ModelKind | None = None) -> InferredModel:
    """The kind, engine and options of the model at `path` (a folder, or a single weights file).
    With `kind` the operator decided the kind; the engine and options still follow the files."""
    path = Path(path)
    if not path.exists():
        raise UnrecognizedModel(f"{path} does not exist")
    folder = path if path.is_dir() else path.parent
    if kind is None:
        found, evidence = _classify(path)
    else:
        found, evidence = kind, "kind named by the operator"
    options: dict[str, Any] = {}
    tool_parser = None
    if found in (ModelKind.EMBEDDING, ModelKind.RERANK):
        options["runner"] = "pooling"
    elif found is ModelKind.CHAT:
        tool_parser = _tool_parser(folder)
    elif found is ModelKind.SAFETY:
        levels = _nsfw_levels(folder, strict=kind is None)
        if levels["0"]:  # else the engine's default labels apply (engines/image/safety.py)
            options["levels"] = levels
    elif found is ModelKind.IMAGE and (family := folder_family(folder)) is not None:
        options["family"] = family.value  # a flow-matching family (engines/image/families.py)
    elif found is ModelKind.VIDEO and _image_pipeline_with_motion_adapter(folder):
        options["motion_adapter"] = str(folder / _MOTION_ADAPTER_DIR)
    engine = ENGINE_FOR_KIND[found]
    if found is ModelKind.UPSCALER and _esrgan_weights(path) is not None:
        engine = ESRGAN_ENGINE
    return InferredModel(kind=found, engine=engine, options=options, tool_parser=tool_parser, evidence=evidence)


def _classify(path: Path) -> tuple[ModelKind, str]:
    if path.is_file():
        return _classify_file(path)
    index = _read_json(path / "model_index.json")
    if index is not None:
        return _classify_pipeline(path, index)
    config = _read_json(path / "config.json")
    if config is None and (weights := _esrgan_weights(path)) is not None:
        return ModelKind.UPSCALER, f"{weights.name}: an RRDBNet (ESRGAN) state dict"
    if config is None:
        raise UnrecognizedModel(f"{path}: no config.json or model_index.json; found {_listing(path)}")
    if (path / "model.bin").is_file() and any(field in config for field in _CT2_WHISPER_FIELDS):
        return ModelKind.TRANSCRIPTION, "a CTranslate2 Whisper folder (model.bin, config.json)"
    if isinstance(config.get("model"), str) and isinstance(config.get("audio"), dict):
        return ModelKind.SPEECH, f"a Coqui TTS config (model {config['model']!r})"
    if "_class_name" in config:
        raise UnrecognizedModel(
            f"{path}: a diffusers {config['_class_name']} is a component, not a pipeline; name it in an image "
            "or video model's options (vaes, controlnets, motion_adapter)"
        )
    return _classify_transformers(path, config)


def _classify_file(path: Path) -> tuple[ModelKind, str]:
    if path.suffix == ".pth":
        config = _read_json(path.parent / "config.json")
        if config is not None and isinstance(config.get("model"), str) and isinstance(config.get("audio"), dict):
            return ModelKind.SPEECH, f"a Coqui TTS checkpoint (model {config['model']!r})"
    if _esrgan_weights(path) is not None:
        return ModelKind.UPSCALER, f"{path.name}: an RRDBNet (ESRGAN) state dict"
    raise UnrecognizedModel(
        f"{path}: a single weights file says nothing of its kind; name the kind (a single-file "
        "Stable Diffusion checkpoint is kind image)"
    )


def _classify_pipeline(path: Path, index: dict[str, Any]) -> tuple[ModelKind, str]:
    name = str(index.get("_class_name", ""))
    evidence = f"model_index.json _class_name: {name}"
    if not name.endswith("Pipeline"):
        raise UnrecognizedModel(f"{path}: model_index.json names no diffusers pipeline (_class_name {name!r})")
    if "Upscale" in name:
        return ModelKind.UPSCALER, evidence
    if name in _VARIATION_PIPELINES:
        return ModelKind.VARIATION, evidence
    if name.endswith(("Img2ImgPipeline", "InpaintPipeline")):
        # The image engine starts from a text-to-image pipeline and derives these from it.
        raise UnrecognizedModel(
            f"{path}: {name} is no text-to-image pipeline; serve a text-to-image checkpoint (an SDXL refiner "
            "goes in its base model's options.refiner)"
        )
    if _VIDEO_PIPELINE.search(name):
        return ModelKind.VIDEO, evidence
    if _image_pipeline_with_motion_adapter(path):
        return ModelKind.VIDEO, f"{evidence} with an AnimateDiff {_MOTION_ADAPTER_DIR}/"
    return ModelKind.IMAGE, evidence


def _esrgan_weights(path: Path) -> Path | None:
    """The RRDBNet weights file at `path` (the file, or a folder's only .pth/.safetensors), or None."""
    from engines.image.esrgan import WEIGHT_SUFFIXES, is_rrdb_state, state_dict_keys, weights_file

    if path.is_dir() and not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        return None
    if path.is_file() and path.suffix not in WEIGHT_SUFFIXES:
        return None
    try:
        weights = weights_file(path)
        return weights if is_rrdb_state(state_dict_keys(weights)) else None
    # Unreadable, truncated, a pickle of other things, a header safetensors rejects: no ESRGAN model,
    # and the caller says what the file is not. Each library raises its own kind of error.
    except Exception:
        return None


def _image_pipeline_with_motion_adapter(folder: Path) -> bool:
    """An image checkpoint that AnimateDiff animates with the MotionAdapter beside its components
    (the video engine puts them together; engines/video/pipelines.py)."""
    name = str((_read_json(folder / "model_index.json") or {}).get("_class_name", ""))
    return not _VIDEO_PIPELINE.search(name) and (folder / _MOTION_ADAPTER_DIR / "config.json").is_file()


def _classify_transformers(path: Path, config: dict[str, Any]) -> tuple[ModelKind, str]:
    architectures = [str(a) for a in config.get("architectures") or []]
    evidence = f"config.json architectures: {', '.join(architectures)}"
    if not architectures:
        raise UnrecognizedModel(
            f"{path}: config.json lists no architectures (model_type {config.get('model_type')!r}); "
            f"found {_listing(path)}"
        )
    if any(a.startswith("Whisper") for a in architectures):
        raise UnrecognizedModel(
            f"{path}: Whisper in transformers form ({', '.join(architectures)}); faster-whisper serves the "
            "CTranslate2 form. Convert it with ctranslate2's converter: `ct2-transformers-converter --model "
            f"{path} --output_dir OUT --copy_files tokenizer.json preprocessor_config.json --quantization "
            "float16` and serve OUT"
        )
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        labels = _label_count(config)
        if labels == 1 or "sentence_transformers" in config:
            return ModelKind.RERANK, f"{evidence} with one label (a cross-encoder)"
        raise UnrecognizedModel(
            f"{path}: a text classifier with {labels} labels ({evidence}); omniserve serves one-label "
            "cross-encoders as rerank models"
        )
    if any((path / name).is_file() for name in _SENTENCE_TRANSFORMERS_FILES):
        return ModelKind.EMBEDDING, f"{evidence} with sentence-transformers files"
    if any(_CAPTIONER.match(a) for a in architectures):
        return ModelKind.CAPTION, f"{evidence} (an image captioner)"
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        if config.get("is_encoder_decoder"):
            raise UnrecognizedModel(
                f"{path}: an encoder-decoder model ({evidence}); vLLM serves decoder-only language models as chat"
            )
        if isinstance(config.get("vision_config"), dict):
            # A vision-language model: chat that also takes image_url parts (the engine asks vLLM).
            return ModelKind.CHAT, f"{evidence} with a vision_config (takes images)"
        return ModelKind.CHAT, evidence
    if any(a.endswith("ForImageClassification") for a in architectures):
        _nsfw_levels(path, strict=True)  # refuses a classifier without NSFW labels
        return ModelKind.SAFETY, evidence
    if any(a.endswith("ForSemanticSegmentation") for a in architectures):
        return ModelKind.SEGMENTATION, evidence
    hint = (
        " (an encoder without sentence-transformers files: name kind embedding to serve it so)"
        if any(a.endswith("Model") for a in architectures)
        else ""
    )
    raise UnrecognizedModel(f"{path}: no kind omniserve serves fits {evidence}{hint}")


def _label_count(config: dict[str, Any]) -> int:
    if isinstance(config.get("num_labels"), int):
        return int(config["num_labels"])
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) else 2  # transformers' default


def _tool_parser(folder: Path) -> str | None:
    """vLLM's tool parser for the tool-call markup the chat template writes, if it is a known one."""
    template = _chat_template(folder)
    return next((parser for markup, parser in _TOOL_MARKUP if markup in template), None)


def _chat_template(folder: Path) -> str:
    try:
        return (folder / "chat_template.jinja").read_text(errors="replace")
    except OSError:
        pass
    tokenizer_config = _read_json(folder / "tokenizer_config.json") or {}
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def _nsfw_levels(folder: Path, *, strict: bool) -> dict[str, list[str]]:
    """`options.levels` for an image classifier: the labels each NSFW level counts, from its own
    id2label. `strict`: refuse a classifier none of whose labels means explicit content."""
    labels = [str(label) for label in ((_read_json(folder / "config.json") or {}).get("id2label") or {}).values()]
    levels: dict[str, list[str]] = {}
    counted: list[str] = []
    for level, names in enumerate(_NSFW_LABELS):
        counted += [label for label in labels if label.lower() in names]
        levels[str(level)] = list(counted)
    if strict and not levels["0"]:
        raise UnrecognizedModel(
            f"{folder}: an image classifier whose labels ({', '.join(labels) or 'none'}) name no NSFW class; "
            "omniserve serves image classifiers as NSFW detectors (kind safety)"
        )
    return levels


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _listing(folder: Path) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return "nothing readable"
    if not names:
        return "an empty folder"
    more = f", ... ({len(names) - _LISTED_FILES} more)" if len(names) > _LISTED_FILES else ""
    return ", ".join(names[:_LISTED_FILES]) + more
