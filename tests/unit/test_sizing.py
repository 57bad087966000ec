"""The planned footprint of undeclared models (engines/sizing.py), per engine kind, from tiny
files written here: config.json and weight files whose headers say what they hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.base import ModelKind, ModelSpec
from engines.devices import DeviceMemory
from engines.llm.sizing import kv_bytes_per_token
from engines.sizing import Footprint, SizingPolicy, plan_footprint
from engines.weights import weight_files
from tests.model_files import TINY_LLAMA, TINY_PER_TOKEN, llm_folder, safetensors

MB = 1 << 20
GB = 1 << 30
POLICY = SizingPolicy()  # 4 sequences, 8192 tokens at most, 25% of the budget, 1 GiB overhead, x1.5
HOST = DeviceMemory(name="cpu", total_bytes=24 * GB, budget_bytes=19 * GB)


def spec(path: Path, engine: str = "vllm", kind: ModelKind = ModelKind.CHAT, **options: object) -> ModelSpec:
    return ModelSpec(name="m", kind=kind, engine=engine, path=str(path), options=options)


def plan(model: ModelSpec, device: DeviceMemory = HOST, policy: SizingPolicy = POLICY) -> Footprint:
    planned = plan_footprint(model, device=device.name, budget=device, policy=policy)
    assert planned is not None
    return planned


# -- vLLM: weights + a bounded KV cache + the engine's overhead ------------------------------------


def test_kv_bytes_per_token_from_config() -> None:
    assert kv_bytes_per_token(TINY_LLAMA, 4) == TINY_PER_TOKEN
    # Grouped-query attention with its own head_dim (Llama 3 8B in bfloat16): 128 KiB a token.
    llama3 = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
    assert kv_bytes_per_token(llama3, 2) == 2 * 32 * 8 * 128 * 2
    # Multi-query attention caches one head; MLA (DeepSeek) one latent per layer.
    assert kv_bytes_per_token({"n_layer": 4, "n_head": 8, "n_embd": 512, "multi_query": True}, 2) == 2 * 4 * 64 * 2
    assert kv_bytes_per_token({"num_hidden_layers": 3, "kv_lora_rank": 512, "qk_rope_head_dim": 64}, 2) == 3 * 576 * 2
    assert kv_bytes_per_token({"hidden_size": 64}, 4) == 0  # not enough to know


def test_undeclared_chat_model_plans_its_sequences(tmp_path: Path) -> None:
    planned = plan(spec(llm_folder(tmp_path, TINY_LLAMA)))
    # 4 sequences of config.json's 1024 tokens.
    assert planned.max_model_len == 1024
    assert planned.kv_cache_bytes == 4 * 1024 * TINY_PER_TOKEN
    assert planned.weights_bytes == MB
    assert planned.total_bytes == MB + 4 * 1024 * TINY_PER_TOKEN + GB


def test_long_contexts_are_capped_and_options_win(tmp_path: Path) -> None:
    long = llm_folder(tmp_path / "long", {**TINY_LLAMA, "max_position_embeddings": 131072})
    assert plan(spec(long)).max_model_len == 8192
    assert plan(spec(long)).kv_cache_bytes == 4 * 8192 * TINY_PER_TOKEN
    # The catalog's context, dtype and cache dtype, where it gives them.
    assert plan(spec(long, max_model_len=100_000)).kv_cache_bytes == 4 * 100_096 * TINY_PER_TOKEN  # whole blocks
    assert plan(spec(long, max_model_len=512, dtype="bfloat16")).kv_cache_bytes == 4 * 512 * TINY_PER_TOKEN // 2
    assert plan(spec(long, max_model_len=512, kv_cache_dtype="fp8")).kv_cache_bytes == 4 * 512 * TINY_PER_TOKEN // 4
    # A multimodal model describes its decoder in text_config.
    nested = llm_folder(tmp_path / "nested", {"text_config": TINY_LLAMA, "architectures": ["X"]})
    assert plan(spec(nested)).kv_cache_bytes == 4 * 1024 * TINY_PER_TOKEN


def test_cache_is_bounded_by_the_budget_but_holds_one_sequence(tmp_path: Path) -> None:
    folder = llm_folder(tmp_path, {**TINY_LLAMA, "max_position_embeddings": 8192})
    one_sequence = 8192 * TINY_PER_TOKEN  # 8 MiB
    small = DeviceMemory(name="cpu", total_bytes=GB, budget_bytes=64 * MB)  # a quarter: 16 MiB
    assert plan(spec(folder), small).kv_cache_bytes == 16 * MB
    tiny = DeviceMemory(name="cpu", total_bytes=GB, budget_bytes=16 * MB)  # a quarter: 4 MiB
    assert plan(spec(folder), tiny).kv_cache_bytes == one_sequence
    assert plan(spec(folder), HOST, SizingPolicy(default_sequences=2)).kv_cache_bytes == 2 * one_sequence


def test_catalog_cache_counts_as_given(tmp_path: Path) -> None:
    folder = llm_folder(tmp_path, TINY_LLAMA)
    assert plan(spec(folder, kv_cache_memory_bytes=64 * MB)).kv_cache_bytes == 64 * MB
    gpu = DeviceMemory(name="cuda:0", total_bytes=80 * GB, budget_bytes=72 * GB)
    assert plan(spec(folder, gpu_memory_utilization=0.5), gpu).kv_cache_bytes == 40 * GB - MB - GB


def test_weights_and_cache_at_the_dtype_vllm_computes_in(tmp_path: Path) -> None:
    safetensors(tmp_path / "model.safetensors", {"w": ("BF16", [MB])})
    (tmp_path / "config.json").write_text(json.dumps({**TINY_LLAMA, "dtype": "bfloat16"}))
    # On CPU an entry without a dtype runs in float32 (engines/llm/sizing.py: CPU_DTYPE).
    on_cpu = plan(spec(tmp_path))
    assert on_cpu.weights_bytes == 4 * MB and on_cpu.kv_cache_bytes == 4 * 1024 * TINY_PER_TOKEN
    bf16 = plan(spec(tmp_path, dtype="bfloat16"))
    assert bf16.weights_bytes == 2 * MB and bf16.kv_cache_bytes == 4 * 1024 * TINY_PER_TOKEN // 2
    # On a GPU vLLM keeps the checkpoint's dtype.
    gpu = DeviceMemory(name="cuda:0", total_bytes=80 * GB, budget_bytes=72 * GB)
    assert plan(spec(tmp_path), gpu).weights_bytes == 2 * MB
    assert plan(spec(tmp_path), gpu).kv_cache_bytes == 4 * 1024 * TINY_PER_TOKEN // 2


def test_declared_and_missing_models_get_no_plan(tmp_path: Path) -> None:
    declared = ModelSpec(name="m", kind=ModelKind.CHAT, path=str(llm_folder(tmp_path, TINY_LLAMA)), memory_bytes=GB)
    assert plan_footprint(declared, device="cpu", budget=HOST, policy=POLICY) is None
    assert plan_footprint(spec(tmp_path / "absent"), device="cpu", budget=HOST, policy=POLICY) is None


# -- weight files: only what a library loads -------------------------------------------------------


def test_weight_files_follow_format_index_and_variant(tmp_path: Path) -> None:
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "consolidated.safetensors"):
        safetensors(tmp_path / name, {"w": ("F32", [4])})
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 100)
    (tmp_path / "training_args.bin").write_bytes(b"\0" * 100)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert [f.name for f in weight_files(tmp_path)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    unet = tmp_path / "unet"
    safetensors(unet / "diffusion_pytorch_model.safetensors", {"w": ("F32", [4])})
    safetensors(unet / "diffusion_pytorch_model.fp16.safetensors", {"w": ("F16", [4])})
    assert [f.name for f in weight_files(unet)] == ["diffusion_pytorch_model.safetensors"]
    assert [f.name for f in weight_files(unet, "fp16")] == ["diffusion_pytorch_model.fp16.safetensors"]
    assert [f.name for f in weight_files(unet, "bf16")] == ["diffusion_pytorch_model.safetensors"]  # no such variant


# -- other engines: weights x activation_factor ----------------------------------------------------


def diffusers_folder(root: Path) -> int:
    """A pipeline with float16 UNet and VAE, a float32 text encoder; returns its float32 bytes."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": [None, None],
    }
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    for name in ("tokenizer", "scheduler"):
        (root / name).mkdir()
        (root / name / "config.json").write_text("{}")
    safetensors(root / "unet" / "diffusion_pytorch_model.safetensors", {"w": ("F16", [MB])})
    safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", {"w": ("F16", [MB // 2])})
    safetensors(root / "text_encoder" / "model.safetensors", {"w": ("F32", [MB // 4]), "ids": ("I8", [1000])})
    # A spare copy outside the components nobody loads.
    safetensors(root / "checkpoint.safetensors", {"w": ("F32", [MB])})
    return 4 * MB + 2 * MB + MB + 1000


def test_diffusers_pipeline_counts_components_at_compute_width(tmp_path: Path) -> None:
    float32_bytes = diffusers_folder(tmp_path / "sd")
    on_cpu = plan(spec(tmp_path / "sd", engine="diffusers", kind=ModelKind.IMAGE))
    assert on_cpu.weights_bytes == float32_bytes  # float16 weights computed in float32
    assert on_cpu.total_bytes == int(float32_bytes * 1.5)
    gpu = DeviceMemory(name="cuda:0", total_bytes=80 * GB, budget_bytes=72 * GB)
    on_gpu = plan(spec(tmp_path / "sd", engine="diffusers", kind=ModelKind.IMAGE), gpu)
    assert on_gpu.weights_bytes == 2 * MB + MB + MB // 2 + 1000  # float16 throughout
    assert on_gpu.kv_cache_bytes == 0


def test_audio_and_classifier_engines(tmp_path: Path) -> None:
    whisper = tmp_path / "whisper"
    whisper.mkdir()
    (whisper / "model.bin").write_bytes(b"\0" * 3 * MB)  # CTranslate2
    (whisper / "config.json").write_text("{}")
    assert plan(spec(whisper, engine="faster-whisper", kind=ModelKind.TRANSCRIPTION)).total_bytes == int(4.5 * MB)
    coqui = tmp_path / "coqui"
    coqui.mkdir()
    (coqui / "model.pth").write_bytes(b"\0" * 2 * MB)
    (coqui / "config.json").write_text("{}")
    assert plan(spec(coqui, engine="coqui", kind=ModelKind.SPEECH)).total_bytes == 3 * MB
    classifier = tmp_path / "nsfw"
    safetensors(classifier / "model.safetensors", {"w": ("F16", [MB])})
    assert plan(spec(classifier, engine="transformers", kind=ModelKind.SAFETY)).weights_bytes == 4 * MB
    assert plan(spec(coqui, engine="coqui", kind=ModelKind.SPEECH), policy=SizingPolicy(activation_factor=2.0)) == (
        Footprint(device="cpu", device_total_bytes=24 * GB, weights_bytes=2 * MB, headroom_bytes=2 * MB)
    )


@pytest.mark.parametrize("engine", ["diffusers", "faster-whisper", "coqui", "transformers"])
def test_an_empty_folder_is_unknown(tmp_path: Path, engine: str) -> None:
    assert plan_footprint(spec(tmp_path, engine=engine), device="cpu", budget=HOST, policy=POLICY) is None
