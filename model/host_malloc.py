"""glibc malloc settings for XLA:CPU processes (training, benchmarks).

XLA:CPU allocates each step's temporaries as one large host buffer (0.8 GiB for
the maxtext_dense train step) and frees it after the step. The step runs on an
XLA worker thread, whose glibc arena serves a block that large with a fresh
`mmap`, so every step page-faults the whole buffer in again: measured 213k
minor faults and 0.40 CPU-s of kernel time per 1.5 s step on 2 cores. With one
arena, no mmap for large blocks and a high trim threshold, the buffer is reused
from the heap (0.09 CPU-s of kernel time per step). tcmalloc, which TPU VM
images preload, avoids the same cost.

glibc reads these settings at process start, so `reexec_with_malloc_settings()`
re-executes the current command once with them in the environment. It is called
first thing in command-line entry points; library code never calls it. Set
TAPESTRY_KEEP_MALLOC=1 to opt out.

Only for CPU backends: on GPU/TPU hosts the step's buffers live on the device, and
one malloc arena would only serialise a multi-threaded input pipeline. The backend
is decided before JAX starts (`cpu_backend_expected`): from JAX_PLATFORMS when set,
else from whether an accelerator plugin is installed and its device nodes exist.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import platform
import sys

MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",  # every thread allocates from the main heap
    "MALLOC_MMAP_MAX_": "0",  # ... which grows with brk instead of per-block mmap
    "MALLOC_TRIM_THRESHOLD_": str(2**40),  # and keeps freed memory for reuse
}


def malloc_settings_active() -> bool:
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())


# (plugin module, device nodes) of each accelerator JAX may pick over the CPU.
ACCELERATORS = {
    "cuda": (("jax_cuda12_plugin", "jax_cuda13_plugin", "jaxlib.cuda"), "/dev/nvidia[0-9]*"),
    "rocm": (("jax_rocm60_plugin", "jax_rocm7_plugin", "jaxlib.rocm"), "/dev/kfd"),
    "tpu": (("libtpu",), "/dev/accel[0-9]*"),
}


def _module_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def cpu_backend_expected(environ: dict[str, str] | None = None) -> bool:
    """Whether JAX will run on CPU here, decided without initialising a backend.

    JAX_PLATFORMS (e.g. 'cpu', 'cuda,cpu') names the backend when set: its first
    entry. Otherwise JAX picks an accelerator when its plugin is installed and a
    device node exists (/dev/nvidia0, /dev/kfd, /dev/accel0)."""
    env = os.environ if environ is None else environ
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    return not any(glob.glob(nodes) and any(_module_installed(m) for m in modules)
                   for modules, nodes in ACCELERATORS.values())


def reexec_with_malloc_settings() -> None:
    """Re-executes this process with MALLOC_ENV set (Linux glibc, CPU backend only;
    at most once)."""
    if (malloc_settings_active() or os.environ.get("TAPESTRY_KEEP_MALLOC")
            or sys.platform != "linux" or platform.libc_ver()[0] != "glibc"
            or not cpu_backend_expected()):
        return
    env = {**os.environ, **MALLOC_ENV}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
