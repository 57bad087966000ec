"""Kind inference from a model's own files: tiny layouts of the JSON files each kind ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engines.base import ModelKind
from engines.model_files import UnrecognizedModel, infer_model


def layout(folder: Path, files: dict[str, Any]) -> Path:
    """`folder` with `files`: dicts written as JSON, strings as text, None as an empty file."""
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("" if content is None else content if isinstance(content, str) else json.dumps(content))
    return folder


def config(*architectures: str, **fields: Any) -> dict[str, Any]:
    return {"architectures": list(architectures), **fields}


def test_a_causal_language_model_is_chat_on_vllm(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("Qwen2ForCausalLM"), "model.safetensors": None})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine, inferred.options) == (ModelKind.CHAT, "vllm", {})
    assert "Qwen2ForCausalLM" in inferred.evidence


@pytest.mark.parametrize("architecture", ["GPT2LMHeadModel", "Gemma3ForConditionalGeneration"])
def test_other_decoder_language_models_are_chat(tmp_path: Path, architecture: str) -> None:
    assert infer_model(layout(tmp_path, {"config.json": config(architecture)})).kind is ModelKind.CHAT


@pytest.mark.parametrize("architecture", ["Idefics3ForConditionalGeneration", "Qwen2VLForConditionalGeneration"])
def test_a_vision_language_model_is_chat_that_takes_images(tmp_path: Path, architecture: str) -> None:
    files = {"config.json": config(architecture, vision_config={"hidden_size": 64}, text_config={})}
    inferred = infer_model(layout(tmp_path, files))
    assert (inferred.kind, inferred.engine) == (ModelKind.CHAT, "vllm")
    assert "takes images" in inferred.evidence


def test_an_encoder_decoder_language_model_is_refused(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("T5ForConditionalGeneration", is_encoder_decoder=True)})
    with pytest.raises(UnrecognizedModel, match=r"encoder-decoder.*T5ForConditionalGeneration"):
        infer_model(folder)


@pytest.mark.parametrize(
    ("template", "parser"),
    [
        ("{{ '<tool_call>' }}", "hermes"),
        ("{{ '<|python_tag|>' }}", "llama3_json"),
        ("{{ '[TOOL_CALLS]' }}", "mistral"),
        ("{{ messages }}", None),
    ],
)
def test_the_tool_parser_follows_the_chat_templates_markup(tmp_path: Path, template: str, parser: str | None) -> None:
    folder = layout(tmp_path, {"config.json": config("LlamaForCausalLM"), "chat_template.jinja": template})
    assert infer_model(folder).tool_parser == parser


def test_a_chat_template_in_the_tokenizer_config_counts_too(tmp_path: Path) -> None:
    named = [{"name": "default", "template": "hi"}, {"name": "tool_use", "template": "<tool_call>"}]
    folder = layout(
        tmp_path, {"config.json": config("LlamaForCausalLM"), "tokenizer_config.json": {"chat_template": named}}
    )
    assert infer_model(folder).tool_parser == "hermes"


def test_a_one_label_sequence_classifier_is_rerank_with_the_pooling_runner(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("BertForSequenceClassification", id2label={"0": "LABEL_0"})})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine, inferred.options) == (ModelKind.RERANK, "vllm", {"runner": "pooling"})


def test_a_sentence_transformers_cross_encoder_is_rerank(tmp_path: Path) -> None:
    fields = {"id2label": {"0": "a", "1": "b"}, "sentence_transformers": {"activation_fn": "torch.nn.Sigmoid"}}
    folder = layout(tmp_path, {"config.json": config("XLMRobertaForSequenceClassification", **fields)})
    assert infer_model(folder).kind is ModelKind.RERANK


def test_a_many_label_text_classifier_is_refused(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("BertForSequenceClassification", num_labels=3)})
    with pytest.raises(UnrecognizedModel, match="3 labels"):
        infer_model(folder)


@pytest.mark.parametrize("marker", ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"])
@pytest.mark.parametrize("architecture", ["BertModel", "XLMRobertaModel", "MPNetModel", "Qwen3ForCausalLM"])
def test_a_model_with_sentence_transformers_files_is_embedding(tmp_path: Path, architecture: str, marker: str) -> None:
    folder = layout(tmp_path, {"config.json": config(architecture), marker: {}})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine, inferred.options) == (ModelKind.EMBEDDING, "vllm", {"runner": "pooling"})


def test_a_bare_encoder_is_refused_with_a_hint_to_name_the_kind(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("BertModel")})
    with pytest.raises(UnrecognizedModel, match=r"BertModel.*name kind embedding"):
        infer_model(folder)
    inferred = infer_model(folder, ModelKind.EMBEDDING)
    assert (inferred.kind, inferred.options) == (ModelKind.EMBEDDING, {"runner": "pooling"})


def test_an_nsfw_image_classifier_is_safety_with_levels_from_its_labels(tmp_path: Path) -> None:
    labels = {"0": "drawings", "1": "hentai", "2": "neutral", "3": "porn", "4": "sexy"}
    folder = layout(tmp_path, {"config.json": config("ViTForImageClassification", id2label=labels)})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine) == (ModelKind.SAFETY, "transformers")
    assert inferred.options == {
        "levels": {"0": ["hentai", "porn"], "1": ["hentai", "porn", "sexy"], "2": ["hentai", "porn", "sexy"]}
    }


def test_an_image_classifier_without_nsfw_labels_is_refused(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("ViTForImageClassification", id2label={"0": "cat", "1": "dog"})})
    with pytest.raises(UnrecognizedModel, match="cat, dog"):
        infer_model(folder)


def test_whisper_in_transformers_form_is_refused_with_how_to_convert(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("WhisperForConditionalGeneration"), "model.safetensors": None})
    with pytest.raises(UnrecognizedModel, match="ct2-transformers-converter --model"):
        infer_model(folder)


@pytest.mark.parametrize("vocabulary", ["vocabulary.json", "vocabulary.txt"])
def test_ctranslate2_whisper_is_transcription_on_faster_whisper(tmp_path: Path, vocabulary: str) -> None:
    files = {"config.json": {"alignment_heads": [[1, 0]], "suppress_ids": []}, "model.bin": None, vocabulary: "a"}
    inferred = infer_model(layout(tmp_path, {**files, "tokenizer.json": {}}))
    assert (inferred.kind, inferred.engine) == (ModelKind.TRANSCRIPTION, "faster-whisper")


@pytest.mark.parametrize("model", ["vits", "xtts"])
def test_a_coqui_config_is_speech(tmp_path: Path, model: str) -> None:
    folder = layout(tmp_path, {"config.json": {"model": model, "audio": {"sample_rate": 22050}}, "model.pth": None})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine) == (ModelKind.SPEECH, "coqui")
    assert inferred.kind is infer_model(folder / "model.pth").kind  # the weights file itself


@pytest.mark.parametrize(
    ("pipeline", "kind"),
    [
        ("StableDiffusionPipeline", ModelKind.IMAGE),
        ("StableDiffusionXLPipeline", ModelKind.IMAGE),
        ("StableDiffusionUpscalePipeline", ModelKind.UPSCALER),
        ("StableDiffusionLatentUpscalePipeline", ModelKind.UPSCALER),
        ("AnimateDiffPipeline", ModelKind.VIDEO),
        ("StableVideoDiffusionPipeline", ModelKind.VIDEO),
        ("TextToVideoSDPipeline", ModelKind.VIDEO),
        ("WanPipeline", ModelKind.VIDEO),
    ],
)
def test_a_diffusers_pipeline_is_classified_by_its_class(tmp_path: Path, pipeline: str, kind: ModelKind) -> None:
    inferred = infer_model(layout(tmp_path, {"model_index.json": {"_class_name": pipeline}}))
    assert (inferred.kind, inferred.engine, inferred.options) == (kind, "diffusers", {})
    assert pipeline in inferred.evidence


@pytest.mark.parametrize(
    ("pipeline", "transformer", "family"),
    [
        ("FluxPipeline", {"guidance_embeds": False}, "flux-schnell"),
        ("FluxPipeline", {"guidance_embeds": True}, "flux-dev"),
        ("StableDiffusion3Pipeline", {"qk_norm": None}, "sd3"),
        ("StableDiffusion3Pipeline", {"qk_norm": "rms_norm"}, "sd3.5"),
        ("QwenImagePipeline", {}, "qwen-image"),
    ],
)
def test_a_flow_pipeline_is_an_image_model_of_its_family(
    tmp_path: Path, pipeline: str, transformer: dict[str, object], family: str
) -> None:
    folder = layout(tmp_path, {"model_index.json": {"_class_name": pipeline}, "transformer/config.json": transformer})
    inferred = infer_model(folder)
    assert (inferred.kind, inferred.engine, inferred.options) == (ModelKind.IMAGE, "diffusers", {"family": family})


def test_an_sd_checkpoint_with_a_motion_adapter_is_animatediff_video(tmp_path: Path) -> None:
    files = {
        "model_index.json": {"_class_name": "StableDiffusionPipeline"},
        "motion_adapter/config.json": {"_class_name": "MotionAdapter"},
    }
    inferred = infer_model(layout(tmp_path, files))
    assert inferred.kind is ModelKind.VIDEO
    assert inferred.options == {"motion_adapter": str(tmp_path / "motion_adapter")}


def test_an_animatediff_pipeline_keeps_its_own_motion_adapter(tmp_path: Path) -> None:
    files = {
        "model_index.json": {"_class_name": "AnimateDiffPipeline"},
        "motion_adapter/config.json": {"_class_name": "MotionAdapter"},
    }
    inferred = infer_model(layout(tmp_path, files))
    assert (inferred.kind, inferred.options) == (ModelKind.VIDEO, {})


@pytest.mark.parametrize("pipeline", ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionInpaintPipeline"])
def test_derived_image_pipelines_are_refused(tmp_path: Path, pipeline: str) -> None:
    with pytest.raises(UnrecognizedModel, match=pipeline):
        infer_model(layout(tmp_path, {"model_index.json": {"_class_name": pipeline}}))


def test_a_lone_diffusers_component_is_refused(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": {"_class_name": "ControlNetModel"}})
    with pytest.raises(UnrecognizedModel, match="ControlNetModel is a component"):
        infer_model(folder)


def test_an_unknown_folder_is_refused_naming_what_it_holds(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"weights.gguf": None, "README.md": "hi", "sub/x": None})
    with pytest.raises(
        UnrecognizedModel, match=r"no config.json or model_index.json; found README.md, sub/, weights.gguf"
    ):
        infer_model(folder)


def test_an_unknown_architecture_is_refused_naming_it(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("BertForMaskedLM")})
    with pytest.raises(UnrecognizedModel, match="architectures: BertForMaskedLM"):
        infer_model(folder)


def test_a_single_weights_file_needs_its_kind_named(tmp_path: Path) -> None:
    checkpoint = tmp_path / "dreamshaper.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(UnrecognizedModel, match="single weights file"):
        infer_model(checkpoint)
    inferred = infer_model(checkpoint, ModelKind.IMAGE)
    assert (inferred.kind, inferred.engine) == (ModelKind.IMAGE, "diffusers")


def test_a_named_kind_overrides_what_the_files_say(tmp_path: Path) -> None:
    folder = layout(tmp_path, {"config.json": config("Qwen3ForCausalLM")})
    inferred = infer_model(folder, ModelKind.RERANK)
    assert (inferred.kind, inferred.engine, inferred.options) == (ModelKind.RERANK, "vllm", {"runner": "pooling"})


def test_a_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnrecognizedModel, match="does not exist"):
        infer_model(tmp_path / "nothing")
