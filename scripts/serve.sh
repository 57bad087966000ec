#!/usr/bin/env bash
# From nothing to a running server on the built-in demo models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/omniserve serve "$@"
