#!/usr/bin/env bash
# One-shot GPU check (issue 11), <= 8 minutes: bf16 MFU of dense_1b and moe_1b at 4k
# tokens, cuDNN vs blockwise attention on packed rows, a 131,072-token forward with its
# peak memory. What it runs and prints: benchmarks/gpu_check.py's docstring.
#
# On a machine lent by the device tool (its image has JAX, Flax and Optax; not gin):
#   here, once:  echo /.whl/ >> .git/info/exclude
#                python3 -m pip download --no-deps --only-binary=:all: -d .whl gin-config==0.5.0
#   there:       run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Anywhere else: bash benchmarks/gpu_check.sh  (with a Python that has jax[cuda], flax,
# optax and gin-config; PYTHON=/path/to/python to choose it). Extra arguments go to
# gpu_check.py (e.g. --parts=attention,mfu). Results also land in $OUT/gpu_check.json
# when OUT is set. CPU dry run of the same code: python benchmarks/gpu_check.py --cpu_smoke
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import gin" 2>/dev/null; then
  if compgen -G ".whl/gin_config-*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_check_site .whl/gin_config-*.whl || exit 1
    export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "error: gin is not importable by $PY and no .whl/gin_config-*.whl to install" >&2
    echo "(see the header of $0 for how to carry it)" >&2
    exit 2
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# The MoE preset's float32 state (~57 GB with AdamW) and a 4k x 4 step need more than
# JAX's default 75% of device memory on smaller cards; 92% leaves room for cuDNN/cuBLAS.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
timeout --signal=INT --kill-after=20 470 "$PY" benchmarks/gpu_check.py "$@"
rc=$?
[[ $rc == 124 ]] && echo "gpu_check: stopped at its 470 s limit" >&2
exit $rc
