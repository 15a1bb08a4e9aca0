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
"""
from __future__ import annotations

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


def reexec_with_malloc_settings() -> None:
    """Re-executes this process with MALLOC_ENV set (Linux glibc only; at most once)."""
    if (malloc_settings_active() or os.environ.get("TAPESTRY_KEEP_MALLOC")
            or sys.platform != "linux" or platform.libc_ver()[0] != "glibc"):
        return
    env = {**os.environ, **MALLOC_ENV}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
