"""Turning a quantised GGUF checkpoint into a float32 transformers folder that vLLM serves.

Small real models reach us as GGUF files inside registry packages. transformers reads a GGUF
(weights, config, tokenizer and chat template) and dequantises it with the `gguf` package;
the result is saved as float32 safetensors, which vLLM's CPU backend loads like any
transformers checkpoint. Building costs seconds, and is done once per demo build.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_file(package: str, name: str) -> Path:
    """A data file inside an installed package, found without importing the package (a
    package that ships a model may import heavy runtimes of its own that we never need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the package {package} (a demo model's weights) is not installed")
    path = Path(spec.origin).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed package {package}")
    return path


def dequantize_gguf(gguf: Path, out: Path) -> None:
    """Write the float32 transformers form of the causal LM in `gguf` (weights, config,
    generation config, tokenizer with its chat template) to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded model still declares GGUF quantisation, which save_pretrained refuses; the
    # same architecture without it takes the already dequantised weights as they are.
    settings = quantised.config.to_dict()
    settings.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # where it was built, not what it is
        settings.pop(key, None)
    config = AutoConfig.for_model(**settings)
    with torch.device("meta"):  # no random init: every weight is assigned just below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), assign=True, strict=True)
    model.tie_weights()
    model.generation_config = quantised.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
