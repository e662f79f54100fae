#!/usr/bin/env bash
# The GPU check in one command (issue 25): `scripts/gpu_check.sh [--smoke] [--out DIR]`.
# On a machine without a package registry, missing wheels are installed from $WHEELS (default .whl/).
# Writes DIR/gpu_check.json and DIR/gpu_check.md; --smoke runs the same steps on the CPU at tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHEELS=${WHEELS:-.whl}
# timm too where it is older than the floor (the GPU image has 1.0.29; RAdamLegacy's per-group step
# sizes, which the 2nd-place optimiser relies on, arrived in 1.0.31).
if ! "$PY" -c "import segmentation_models_pytorch, pydantic, albumentations, timm, sys; from packaging.version import Version as V; sys.exit(V(timm.__version__) < V('1.0.31'))" 2>/dev/null; then
  if [ -d "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/segladder-site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/segladder-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "error: segmentation-models-pytorch, pydantic or albumentations is missing and there is no wheel folder $WHEELS; set WHEELS=DIR or install them" >&2
    exit 2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec "$PY" scripts/gpu_check.py "$@"
