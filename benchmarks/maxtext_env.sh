#!/usr/bin/env bash
# Builds the MaxText 0.2.5 environment the train-step benchmarks compare against.
#
#   bash benchmarks/maxtext_env.sh          # once (~10 min on 2 cores); idempotent
#   MAXTEXT_VENV=/some/dir bash benchmarks/maxtext_env.sh
#
# MaxText 0.2.5 needs Python >= 3.12 (ours is 3.11), so it lives in its own venv,
# outside the checkout: $MAXTEXT_VENV, default ~/.cache/tapestry/maxtext-0.2.5.
# Python 3.12 comes from pyenv ($PYTHON312 overrides). The wheel declares no base
# dependencies (only extras for cuda12/tpu); we install the hardware-independent set
# it ships itself (dependencies/requirements/generated_requirements/
# decoupled-requirements.txt, "what DECOUPLE_GCLOUD=TRUE has to work in") minus the
# NVIDIA/CUDA wheels and the linters/dev tools, plus jax[cpu]. Everything from PyPI;
# the resolved set is written to $VENV/freeze.txt (here, 2026-12-01: jax 0.12.0.1,
# flax 0.12.12, optax 0.2.8, 203 packages, 1.9 GB).
# benchmarks/maxtext_step.py runs inside it; benchmarks/model_step.py and
# benchmarks/train_throughput.py find it at the same path (or $MAXTEXT_PYTHON).
set -euo pipefail

VENV="${MAXTEXT_VENV:-$HOME/.cache/tapestry/maxtext-0.2.5}"
if [[ -f "$VENV/.installed" ]]; then
  echo "maxtext env ready: $VENV/bin/python"; exit 0
fi
PY="${PYTHON312:-}"
if [[ -z "$PY" ]]; then
  for cand in "$HOME"/.pyenv/versions/3.12.*/bin/python3.12 "$(command -v python3.12 || true)"; do
    [[ -x "$cand" ]] && PY="$cand" && break
  done
fi
if [[ -z "$PY" ]]; then
  echo "error: no Python 3.12 found (pyenv install 3.12 or set PYTHON312=/path/to/python3.12)" >&2
  exit 1
fi
echo "building $VENV with $PY"
"$PY" -m venv "$VENV"
pip_install() {  # quiet, niced; drops pip's notes about this machine's empty local indexes
  nice -n 10 "$VENV/bin/python" -m pip install --quiet --prefer-binary "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
pip_install --upgrade pip
pip_install "maxtext==0.2.5"
REQ="$("$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib
site = pathlib.Path(importlib.util.find_spec("maxtext").origin).parents[1]
print(site / "dependencies/requirements/generated_requirements/decoupled-requirements.txt")
EOF
)"
# Drop GPU wheels and tools a train step never imports (linters, formatters, type checkers).
SKIP='^(nvidia-|cuda-|apache-tvm-ffi|pytype|pylint|pyink|black|pre-commit|astroid|isort|'
SKIP+='auditwheel|virtualenv|nodeenv|identify|cfgv|pycnite|importlab|libcst|scipy-stubs|'
SKIP+='pytest|hypothesis|coverage|execnet|build|responses)'
FILTERED="$VENV/maxtext-requirements.txt"
grep -vE '^\s*#' "$REQ" | grep -vE "$SKIP" | sed '/^\s*$/d' > "$FILTERED"
pip_install -r "$FILTERED" "jax[cpu]"
"$VENV/bin/python" -c "import jax, maxtext; print('maxtext env:', jax.__version__)"
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"
touch "$VENV/.installed"
echo "maxtext env ready: $VENV/bin/python"
