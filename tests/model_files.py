"""Model folders for sizing tests: config.json and safetensors files whose headers say what
they hold, the data zeros (sparse), written in microseconds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MB = 1 << 20

# The demo chat model's shape: 2 layers, 2 heads of 32, float32.
TINY_LLAMA = {
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "hidden_size": 64,
    "max_position_embeddings": 1024,
    "dtype": "float32",
}
TINY_PER_TOKEN = 2 * 2 * 2 * 32 * 4  # K and V x layers x KV heads x head_dim x float32


def safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors file whose header describes `tensors` (name: (dtype, shape)); the data
    are zeros. Returns the data's size."""
    widths = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1}
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * widths[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as stream:
        stream.write(len(encoded).to_bytes(8, "little") + encoded)
        stream.truncate(8 + len(encoded) + offset)
    return offset


def llm_folder(root: Path, config: dict[str, Any], weights: int = MB) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    safetensors(root / "model.safetensors", {"w": ("F32", [weights // 4])})
    return root
