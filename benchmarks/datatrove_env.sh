#!/usr/bin/env bash
# Builds the DataTrove 0.10.1 environment that benchmarks/curation.py compares against.
#
#   bash benchmarks/datatrove_env.sh          # once (a few minutes); idempotent
#   DATATROVE_VENV=/some/dir bash benchmarks/datatrove_env.sh
#
# DataTrove is NOT a dependency of ours: it lives in its own venv outside the checkout,
# $DATATROVE_VENV (default ~/.cache/tapestry/datatrove-0.10.1). Its Gopher filters split
# words with spaCy's English tokenizer, so spaCy comes too (the `processing` extra pulls
# much more: fasttext, nltk, inscriptis, ...; only what the three compared stages import
# is installed). xxhash 4 refuses str, which DataTrove's MinHash passes it: xxhash 3.6.0.
# Everything from PyPI, at low priority (nice -n 10).
set -euo pipefail

VENV="${DATATROVE_VENV:-$HOME/.cache/tapestry/datatrove-0.10.1}"
if [[ -f "$VENV/.installed" ]]; then
  echo "datatrove env ready: $VENV/bin/python"; exit 0
fi
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
echo "building $VENV with $PY"
"$PY" -m venv "$VENV"
PIP=("nice" "-n" "10" "$VENV/bin/python" "-m" "pip" "install" "--quiet" "--prefer-binary")
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "datatrove==0.10.1" "spacy==3.8.18" "xxhash==3.6.0" "nltk" "tokenizers"
# The three stages we compare must import (a missing extra shows here, not mid-benchmark).
"$VENV/bin/python" - <<'PYEOF'
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.utils.word_tokenizers import load_word_tokenizer
print(load_word_tokenizer("en").word_tokenize("Hello, world. It's a test."))
PYEOF
touch "$VENV/.installed"
echo "datatrove env ready: $VENV/bin/python"
