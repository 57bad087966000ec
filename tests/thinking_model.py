"""A tiny random ChatML Llama whose tokenizer knows ``<think>`` and ``</think>`` as single
tokens (as DeepSeek-R1's does), and random LoRA adapters for it: built in seconds, no
downloads. Output is random, so tests force its shape with structured output."""

from __future__ import annotations

import json
from pathlib import Path

from engines.base import ModelKind, ModelSpec

THINK_START, THINK_END = "<think>", "</think>"

_TEXT = """\
the quick brown fox jumps over the lazy dog and thinks about the river and the sea
a small model can still answer questions about rivers forests mountains and cities
hello how are you today i am fine thank you what is the weather like in paris
"""

_TEMPLATE = (
    "{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

HIDDEN, LAYERS = 64, 2


def build_thinking_model(out: Path) -> None:
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT.splitlines(), trainer)
    # Not special: kept in decoded text, where the reasoning parser finds them.
    tok.add_tokens([AddedToken(t, normalized=False) for t in (THINK_START, THINK_END)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_TEMPLATE,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention rejects 16
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)


def build_lora_adapter(out: Path, *, rank: int = 8, seed: int = 1) -> None:
    """A PEFT-format adapter on q_proj and v_proj with random A and B (B nonzero, unlike a
    freshly initialised PEFT adapter), large enough to change greedy output."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, HIDDEN, generator=generator)
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(HIDDEN, rank, generator=generator)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
        "fan_in_fan_out": False,
        "base_model_name_or_path": None,
    }
    (out / "adapter_config.json").write_text(json.dumps(config))


def thinking_spec(path: Path, **fields: object) -> ModelSpec:
    import msgspec

    return msgspec.convert(
        {
            "name": "thinker",
            "kind": ModelKind.CHAT,
            "path": str(path),
            "options": {
                "dtype": "float32",
                "enforce_eager": True,
                "kv_cache_memory_bytes": 32 * 1024 * 1024,
                "max_model_len": 256,
            },
            "reasoning_parser": "deepseek_r1",
            **fields,
        },
        ModelSpec,
    )
