"""`pip wheel . --no-deps` builds a complete package: every subpackage, the vocabulary and
the gin files, usable from a directory where the checkout is not importable.

Running the jobs from the installed wheel (preprocess_multimodal on Beam's portable
runner, model.train and model.eval with the packaged gin files and vocabulary) is
tests/test_portable_gcs.py.
"""
from __future__ import annotations

import os
import zipfile

import pytest

from pipelines import vocab
from tests import wheel_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel():
    return wheel_env.installed_wheel()


def _source_files(top: str, suffix: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(os.path.join(wheel_env.REPO, top)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [os.path.relpath(os.path.join(root, f), wheel_env.REPO) for f in files
                if f.endswith(suffix)]
    return sorted(out)


def test_wheel_holds_every_package_the_vocab_and_the_gin_files(wheel):
    names = set(zipfile.ZipFile(wheel[1]).namelist())
    modules = [m for top in ("pipelines", "tasks", "model") for m in _source_files(top, ".py")]
    missing = [m for m in modules if m not in names]
    assert not missing, (f"not in the wheel (add their packages to [tool.setuptools] packages "
                         f"in pyproject.toml): {missing}")
    assert "tasks/vocab/tapestry_8k.model" in names
    gin_files = _source_files("gin", ".gin")
    assert gin_files and all(f"tapestry_gin/{g}" in names for g in gin_files)


def test_installed_wheel_runs_without_the_checkout(wheel, tmp_path):
    site, _ = wheel
    code = """
import importlib.util, sys
import model, pipelines, tasks
from model import gin_flags
from pipelines import vocab
for m in (model, pipelines, tasks):
    assert m.__file__.startswith(SITE), m.__file__
assert importlib.util.find_spec("tests") is None, "the checkout is importable"
assert gin_flags.packaged_gin_root() == [SITE + "/tapestry_gin"], gin_flags.packaged_gin_root()
print(len(vocab.read_bytes()), vocab.load().encode("hello world"))
""".replace("SITE", repr(site))
    out = wheel_env.run(["-c", code], str(tmp_path), wheel_env.isolated_env(site), timeout=300)
    with open(os.path.join(wheel_env.REPO, "tasks", "vocab", "tapestry_8k.model"), "rb") as f:
        checkout_vocab = f.read()
    assert out.strip() == f"{len(checkout_vocab)} {vocab.load().encode('hello world')}"
