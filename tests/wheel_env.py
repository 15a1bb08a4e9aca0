"""The project as users install it: `pip wheel . --no-deps`, installed with
`pip install --target DIR --no-deps`, and an environment whose processes import the
project from DIR only (the pinned dependencies come from this venv's site-packages),
run from a directory outside the checkout.

The wheel is built from a copy of the source tree (no `.venv`, `.git`, `build/`), so a
stale `build/lib` can never leak into it; it is built once per test session.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                               "demo_out", "work_dirs")


@functools.cache
def installed_wheel() -> tuple[str, str]:
    """(site dir holding the installed wheel, the wheel file)."""
    root = tempfile.mkdtemp(prefix="tapestry_wheel_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    src, dist, site = (os.path.join(root, d) for d in ("src", "dist", "site"))
    shutil.copytree(REPO, src, ignore=_SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", src, "--no-deps", "-w", dist], check=True, timeout=600)
    (wheel,) = [os.path.join(dist, f) for f in os.listdir(dist) if f.endswith(".whl")]
    subprocess.run(pip + ["install", "--no-deps", "--target", site, wheel], check=True, timeout=600)
    return site, wheel


def isolated_env(site: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that sees the installed wheel and the venv, not the
    checkout: PYTHONPATH is the wheel's site dir alone, the venv's bin first on PATH
    (Beam's worker pool starts SDK workers as `python`), one CPU device for JAX."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update(PYTHONPATH=site, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    env.update(extra or {})
    return env


def run(args: list[str], cwd: str, env: dict[str, str], timeout: float) -> str:
    """Runs `python args...`; returns its output, or fails with the output's tail."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"`python {' '.join(args[:3])} ...` exited {proc.returncode}:\n"
                             + proc.stdout[-6000:])
    return proc.stdout
