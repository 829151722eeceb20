#!/usr/bin/env bash
# The GPU campaign's one command, run from the repo root of the checkout's copy on the lent GPU machine
# (`make gpu-bundle` prints the exact device call). Everything comes back in $OUT: campaign.tar.gz,
# provenance.json, summary.txt. CPU rehearsal (what the test suite runs):
#   OUT=/tmp/c PYTHON=.venv/bin/python GPU_BUNDLE=/tmp/bundle bash experiments/gpu_campaign/campaign.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-$ROOT/.gpu}
: "${OUT:?campaign.sh: OUT must name the folder that comes back}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-campaign.XXXXXX") || exit 2
# kernels/ is the package adrenaline_kernels (installed under that name elsewhere): a link makes it importable.
mkdir -p "$WORK/pkg" && ln -sfn "$ROOT/kernels" "$WORK/pkg/adrenaline_kernels"
SITE="$WORK/site"
if compgen -G "$BUNDLE/wheels/core/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$BUNDLE"/wheels/core/*.whl \
    || echo "campaign.sh: installing $BUNDLE/wheels/core failed; steps that need those packages will fail" >&2
fi
export PYTHONPATH="$SITE:$WORK/pkg:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# SGLang's kernel from the bundle's files, never from an importable sglang (there is none on the GPU machine).
export ADRENALINE_SGLANG_KERNEL_SRC="$BUNDLE/sglang_kernels" ADRENALINE_SGLANG_KERNEL_STANDALONE=1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec "$PY" -m experiments.gpu_campaign.run --out "$OUT" --work "$WORK" --bundle "$BUNDLE" "$@"
