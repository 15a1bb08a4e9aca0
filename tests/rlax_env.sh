#!/usr/bin/env bash
# Builds the side environment tests/test_vmpo.py compares against: rlax (DeepMind's RL
# building blocks) with distrax, a pinned tfp-nightly (distrax asks for an unpinned one)
# and chex, none of which Tapestry itself needs.
#
#   bash tests/rlax_env.sh                  # once (seconds: small pure-Python wheels)
#   TAPESTRY_RLAX_ENV=/some/dir bash tests/rlax_env.sh
#
# Installed with --no-deps into a target directory ($TAPESTRY_RLAX_ENV, default
# ~/.cache/tapestry/rlax-env) that the test puts on sys.path after our .venv's own
# packages, so rlax runs on exactly our jax/numpy; the test skips, saying so, when
# the directory is missing.
set -euo pipefail
DIR="${TAPESTRY_RLAX_ENV:-$HOME/.cache/tapestry/rlax-env}"
if [[ -f "$DIR/.installed" ]]; then
  echo "rlax env ready: $DIR"; exit 0
fi
PIP="${PIP:-$(dirname "$0")/../.venv/bin/pip}"
nice -n 10 "$PIP" install --quiet --no-deps --target "$DIR" \
  "rlax==0.1.9" "distrax==0.1.9" "tfp-nightly==0.26.0.dev20261027" "chex==0.1.92" \
  "dm-env==1.6" "toolz==1.1.0"
touch "$DIR/.installed"
echo "rlax env ready: $DIR"
