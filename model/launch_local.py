"""Runs N copies of a command as the processes of one JAX job on this machine.

    python -m model.launch_local --num_processes=2 --devices_per_process=4 -- \
        python -m model.train --gin_file=gin/runs/pretrain_synthetic.gin ...

Each copy is the exact command a pod host runs; only its environment differs, as
on a cluster:

    JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>   (read by jax.distributed itself)
    JAX_COORDINATOR_BIND_ADDRESS=127.0.0.1:<port>   (the coordinator stays on loopback)
    JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=p           (read by initialize_distributed)
    XLA_FLAGS=--xla_force_host_platform_device_count=D, JAX_PLATFORMS=cpu (default)
    TAPESTRY_DIST_HEARTBEAT_TIMEOUT_S / TAPESTRY_DIST_INIT_TIMEOUT_S (small, so a
    dead peer is noticed in seconds, not JAX's default 100 s / 300 s)

Output lines are prefixed `[p<i>]`. SIGTERM/SIGINT to the launcher are forwarded to
every process. When one process fails (non-zero exit or killed), the others get
`--failure_grace_s` seconds to notice on their own, then are killed; the launcher
exits with the first failure's code (128 + signal for a killed process), else 0.
Tests and benchmarks use `LocalCluster` directly.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Sequence

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_BIND = "JAX_COORDINATOR_BIND_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_HEARTBEAT = "TAPESTRY_DIST_HEARTBEAT_TIMEOUT_S"
ENV_INIT_TIMEOUT = "TAPESTRY_DIST_INIT_TIMEOUT_S"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the coordinator binds it shortly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict[str, str], process_id: int, num_processes: int, port: int,
                devices_per_process: int, heartbeat_timeout_s: int,
                init_timeout_s: int) -> dict[str, str]:
    """The environment of process `process_id` (see the module docstring)."""
    flags = [f for f in base.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    flags.append(f"{DEVICE_COUNT_FLAG}={devices_per_process}")
    env = dict(base)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update({
        ENV_COORDINATOR: f"127.0.0.1:{port}", ENV_BIND: f"127.0.0.1:{port}",
        ENV_NUM_PROCESSES: str(num_processes), ENV_PROCESS_ID: str(process_id),
        ENV_HEARTBEAT: str(heartbeat_timeout_s), ENV_INIT_TIMEOUT: str(init_timeout_s),
        "XLA_FLAGS": " ".join(flags), "PYTHONUNBUFFERED": "1",
    })
    return env


_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the launcher dies (Linux), so a
    killed launcher never leaves orphaned JAX processes holding the port. (Resolved
    before forking: the child only makes the system call.)"""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _exit_code(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


class LocalCluster:
    """N local processes of one JAX job; `start()`, then `wait()`.

    Args:
      command: the program and its arguments (run as is in every process).
      num_processes, devices_per_process: job shape (fake CPU devices per process).
      heartbeat_timeout_s, init_timeout_s: jax.distributed timeouts for the children.
      failure_grace_s: after the first failure, how long the others may take to exit
        on their own before they are killed.
      output: where the prefixed lines go (default sys.stdout).
      env: base environment (default os.environ).
    """

    def __init__(self, command: Sequence[str], num_processes: int, devices_per_process: int = 1,
                 *, heartbeat_timeout_s: int = 10, init_timeout_s: int = 60,
                 failure_grace_s: float = 0.0, output: IO[str] | None = None,
                 env: dict[str, str] | None = None, cwd: str | None = None):
        if not command:
            raise ValueError("no command: put it after `--`, e.g. -- python -m model.train ...")
        if num_processes < 1 or devices_per_process < 1:
            raise ValueError(f"num_processes={num_processes} and devices_per_process="
                             f"{devices_per_process} must be >= 1")
        self.command = list(command)
        self.num_processes = num_processes
        self.devices_per_process = devices_per_process
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.init_timeout_s = init_timeout_s
        self.failure_grace_s = failure_grace_s
        self.output = output or sys.stdout
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.procs: list[subprocess.Popen] = []
        self._pumps: list[threading.Thread] = []
        self._write_lock = threading.Lock()

    def start(self) -> "LocalCluster":
        port = free_port()
        for p in range(self.num_processes):
            env = process_env(self.env, p, self.num_processes, port, self.devices_per_process,
                              self.heartbeat_timeout_s, self.init_timeout_s)
            proc = subprocess.Popen(self.command, env=env, cwd=self.cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    preexec_fn=_die_with_parent)
            self.procs.append(proc)
        for p, proc in enumerate(self.procs):  # threads only after every fork
            pump = threading.Thread(target=self._pump, args=(p, proc), daemon=True)
            pump.start()
            self._pumps.append(pump)
        return self

    def _pump(self, p: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            with self._write_lock:
                self.output.write(f"[p{p}] {line}")
                self.output.flush()

    def send_signal(self, sig: int, process_id: int | None = None) -> None:
        """Signals one process (or all of them when `process_id` is None)."""
        targets = self.procs if process_id is None else [self.procs[process_id]]
        for proc in targets:
            if proc.poll() is None:
                proc.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> list[int]:
        """Waits for every process; returns their exit codes (128 + signal if killed).

        After the first failure the others get `failure_grace_s`, then SIGKILL. On
        `timeout` (seconds) everything is killed and TimeoutError raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        kill_at = None
        while any(proc.poll() is None for proc in self.procs):
            now = time.monotonic()
            if deadline is not None and now > deadline:
                self.kill()
                self._drain()
                raise TimeoutError(f"{self.command[:4]}... still running after {timeout} s; "
                                   f"killed all {self.num_processes} processes")
            failed = any(proc.poll() not in (None, 0) for proc in self.procs)
            if failed and kill_at is None:
                kill_at = now + self.failure_grace_s
            if kill_at is not None and now >= kill_at:
                self.kill()
            time.sleep(0.05)
        self._drain()
        return [_exit_code(proc.returncode) for proc in self.procs]

    def _drain(self) -> None:
        for proc in self.procs:
            proc.wait()
        for pump in self._pumps:
            pump.join(timeout=5)


def first_failure(codes: Sequence[int]) -> int:
    return next((c for c in codes if c != 0), 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m model.launch_local [options] -- <command ...>",
              file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(
        prog="python -m model.launch_local",
        description="Run a command as N processes of one JAX job on this machine.")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=1,
                        help="fake CPU devices per process (XLA_FLAGS)")
    parser.add_argument("--heartbeat_timeout_s", type=int, default=10,
                        help="a process silent this long is declared dead")
    parser.add_argument("--init_timeout_s", type=int, default=60,
                        help="how long processes wait for each other at start")
    parser.add_argument("--failure_grace_s", type=float, default=0.0,
                        help="after one process fails, seconds before the rest are killed")
    args = parser.parse_args(argv[:split])
    try:
        cluster = LocalCluster(argv[split + 1:], args.num_processes, args.devices_per_process,
                               heartbeat_timeout_s=args.heartbeat_timeout_s,
                               init_timeout_s=args.init_timeout_s,
                               failure_grace_s=args.failure_grace_s)
    except ValueError as e:
        print(f"launch_local: {e}", file=sys.stderr)
        return 2

    def forward(signum, frame):
        del frame  # signal handler API
        cluster.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    cluster.start()
    codes = cluster.wait()
    if any(codes):
        print(f"launch_local: exit codes {codes}", file=sys.stderr)
    return first_failure(codes)


if __name__ == "__main__":
    sys.exit(main())
