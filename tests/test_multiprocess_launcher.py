"""model.launch_local without JAX: each process's environment, prefixed output, a
failure that takes the others down, SIGTERM forwarding, and the CLI's exit code."""
from __future__ import annotations

import io
import signal
import subprocess
import sys
import time

from model import launch_local
from tests import train_testlib

SHOW_ENV = ("import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
            "os.environ['JAX_COORDINATOR_ADDRESS'], os.environ['JAX_COORDINATOR_BIND_ADDRESS'], "
            "os.environ['XLA_FLAGS'], os.environ['TAPESTRY_DIST_HEARTBEAT_TIMEOUT_S'])")


def test_each_process_gets_its_id_and_the_shared_coordinator():
    out = io.StringIO()
    cluster = launch_local.LocalCluster(
        [sys.executable, "-c", SHOW_ENV], 3, 2, heartbeat_timeout_s=7, output=out,
        env={"PATH": "/usr/bin:/bin", "XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                                                   "--xla_cpu_foo=1"}).start()
    assert cluster.wait(timeout=60) == [0, 0, 0]
    lines = sorted(out.getvalue().splitlines())
    assert [line.split()[:3] for line in lines] == [["[p0]", "0", "3"], ["[p1]", "1", "3"],
                                                   ["[p2]", "2", "3"]]
    addresses = {line.split()[3] for line in lines} | {line.split()[4] for line in lines}
    assert len(addresses) == 1 and addresses.pop().startswith("127.0.0.1:")
    for line in lines:  # the device count replaced, other XLA flags kept
        assert line.split()[5:] == ["--xla_cpu_foo=1",
                                    "--xla_force_host_platform_device_count=2", "7"]


def test_one_failure_kills_the_others_and_is_the_exit_code():
    program = ("import os, sys, time; p = int(os.environ['JAX_PROCESS_ID']); "
               "time.sleep(0.5) if p == 1 else time.sleep(60); sys.exit(3)")
    cluster = launch_local.LocalCluster([sys.executable, "-c", program], 3,
                                        output=io.StringIO()).start()
    start = time.monotonic()
    codes = cluster.wait(timeout=60)
    assert codes[1] == 3 and codes[0] == codes[2] == 128 + signal.SIGKILL
    assert time.monotonic() - start < 30
    assert launch_local.first_failure(codes) in (3, 128 + signal.SIGKILL)


def test_cli_forwards_sigterm_to_every_process():
    program = ("import os, signal, sys, time; "
               "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True), sys.exit(0))); "
               "print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-m", "model.launch_local", "--num_processes=2",
                             "--", sys.executable, "-c", program], cwd=train_testlib.REPO,
                            env=train_testlib.env(1), stdout=subprocess.PIPE, text=True)
    ready = [proc.stdout.readline() for _ in range(2)]
    assert sorted(ready) == ["[p0] ready\n", "[p1] ready\n"]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert sorted(out.split("\n")[:2]) == ["[p0] term", "[p1] term"]


def test_cli_without_a_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "model.launch_local", "--num_processes=2"],
                          cwd=train_testlib.REPO, env=train_testlib.env(1), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
