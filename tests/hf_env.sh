#!/usr/bin/env bash
# Builds the side environment the HF interop tests compare against: torch (CPU),
# HF transformers and lm-eval's `hf` backend, none of which Tapestry itself needs.
#
#   bash tests/hf_env.sh                 # once (minutes: torch is ~700 MB); idempotent
#   TAPESTRY_HF_VENV=/some/dir bash tests/hf_env.sh
#
# It lives outside the checkout ($TAPESTRY_HF_VENV, default ~/.cache/tapestry/hf-env)
# because torch needs setuptools >= 77, which our main venv does not take, and so that
# trainer hosts never carry torch. tests/test_hf_export.py and
# tests/test_lm_eval_adapter.py run their HF side in it through a subprocess
# (tests/hf_reference.py) and skip, saying so, when it is missing.
set -euo pipefail
VENV="${TAPESTRY_HF_VENV:-$HOME/.cache/tapestry/hf-env}"
if [[ -f "$VENV/.installed" ]]; then
  echo "hf env ready: $VENV/bin/python"; exit 0
fi
PY="${PYTHON:-python3.11}"
"$PY" -m venv "$VENV"
nice -n 10 "$VENV/bin/python" -m pip install --quiet --prefer-binary \
  "torch==2.13.0" "transformers==5.24.0" "lm-eval[hf]==0.4.13" "safetensors==0.8.0" \
  "sentencepiece==0.2.1" "protobuf==6.33.6" "numpy==2.4.6"
touch "$VENV/.installed"
echo "hf env ready: $VENV/bin/python"
