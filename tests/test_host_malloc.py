"""Entry points re-execute once with the glibc malloc settings XLA:CPU steps need."""
import os
import subprocess
import sys

import pytest

from model import host_malloc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = ("import os, sys; from model import host_malloc; "
           "host_malloc.reexec_with_malloc_settings(); "
           "print(os.environ.get('MALLOC_ARENA_MAX'), sys.argv[1:])")


def _run(extra_env):
    env = {k: v for k, v in os.environ.items() if k not in host_malloc.MALLOC_ENV}
    env.pop("TAPESTRY_KEEP_MALLOC", None)
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", PROGRAM, "--flag=1"], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_reexec_sets_malloc_env_and_keeps_arguments():
    assert _run({}) == "1 ['--flag=1']"


def test_opt_out_keeps_the_process():
    assert _run({"TAPESTRY_KEEP_MALLOC": "1"}) == "None ['--flag=1']"


@pytest.mark.parametrize("platforms, cpu", [("cpu", True), ("cuda", False), ("tpu", False),
                                            ("cuda,cpu", False), ("cpu,cuda", True)])
def test_backend_from_jax_platforms(platforms, cpu):
    assert host_malloc.cpu_backend_expected({"JAX_PLATFORMS": platforms}) is cpu


def test_no_accelerator_here_means_cpu():
    """This machine has no /dev/nvidia*, /dev/kfd or /dev/accel*: JAX would use the CPU."""
    import glob
    if any(glob.glob(n) for _, n in host_malloc.ACCELERATORS.values()):
        pytest.skip("an accelerator device node exists on this machine")
    assert host_malloc.cpu_backend_expected({})


def test_no_reexec_on_an_accelerator_backend():
    assert _run({"JAX_PLATFORMS": "cuda"}) == "None ['--flag=1']"
