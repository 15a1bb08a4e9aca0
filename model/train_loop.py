"""The training loop: steps, hooks, and the stop decisions every process agrees on.

    result = run_loop(loop, state, step)     # after restore-or-init (model/restore.py)

Per step: take this host's next (batch, input state); agree with the other hosts
that every one of them has a batch (else all save and stop: end of data, or an
input error such as a corrupt record, which is re-raised naming the host's
exception); run the jitted step; run the hooks that are due; stop on preemption.

Agreement, so that hosts never diverge (see model/distributed.py):
- end of data / input errors: a tiny all-gather of two flags before each step
  (multi-process runs only);
- preemption: SIGTERM (single process) or JAX's preemption sync point, which gives
  every process the same step;
- NaN/Inf loss: the loss is replicated, so every host sees the same value; it is
  checked one step late (while the next step runs) except when a hook is due;
- eval / checkpoint / log cadence: multiples of the step number.
The stop checkpoint is written once (every host its shards) and holds the input
state of every host.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterator

import jax

from model import distributed
from model.checkpointing import Checkpointer
from model.train_input import Pair, State
from model.trainer import Hooks, StepInfo, TrainState, host_metrics

log = logging.getLogger("tapestry.train")


class NonFiniteLossError(FloatingPointError):
    """Raised when a step's loss is NaN or Inf."""


class InputDataError(RuntimeError):
    """Reading the training data failed (e.g. a corrupt record); a checkpoint was saved."""


def check_finite(step: int, loss: Any) -> None:
    loss = float(loss)
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}: stopping. Lower the learning rate, enable "
            f"gradient clipping (adamw.clip_norm), or check the data of batch {step - 1}.")


@dataclasses.dataclass
class DataPosition:
    """Where this host's input stands: batches consumed and the iterator state after
    the last of them (what a checkpoint saves; see model/train_input.py)."""
    consumed: int
    iterator_state: State = None
    dataset: dict[str, Any] | None = None

    def for_checkpoint(self) -> dict[str, Any]:
        """The checkpoint's data position; gathers every host's state (collective)."""
        states = distributed.allgather_json(self.iterator_state)
        out: dict[str, Any] = {"train_batches_consumed": self.consumed,
                               "dataset": self.dataset}
        if any(s is not None for s in states):
            out["iterator_states"] = states
        return out


@dataclasses.dataclass
class Loop:
    """What the loop needs besides the state."""
    train_steps: int
    batches: Iterator[Pair]
    train_step: Callable[[TrainState, Any], tuple[TrainState, Any]]
    shard_batch: Callable[[Any], Any]
    hooks: Hooks
    checkpointer: Checkpointer
    position: DataPosition
    on_first_step: Callable[[int, Any], None] = lambda step, metrics: None


@dataclasses.dataclass
class LoopResult:
    step: int
    state: TrainState
    preempted: bool


def save(loop: Loop, step: int, state: TrainState) -> None:
    """A checkpoint of `state` with every host's data position (all hosts call it)."""
    loop.checkpointer.save(step, state, loop.position.for_checkpoint())


def _next_pair(batches: Iterator[Pair]) -> tuple[Pair | None, BaseException | None]:
    try:
        return next(batches), None
    except StopIteration:
        return None, None
    except Exception as e:  # pylint: disable=broad-except  - any reader error stops the run
        return None, e


def _stop_for_input(loop: Loop, step: int, state: TrainState, pair: Pair | None,
                    error: BaseException | None) -> bool:
    """Agrees whether any host lacks a batch; if so saves and returns True (end of
    data) or raises InputDataError (an input error on some host)."""
    flags = distributed.gather_flags([pair is None and error is None, error is not None])
    if not flags.any():
        return False
    save(loop, step, state)
    failed = [int(p) for p in flags[:, 1].nonzero()[0]]
    if failed:
        where = f"process {jax.process_index()}: " if distributed.is_multiprocess() else ""
        detail = (f"{where}{type(error).__name__}: {error}" if error is not None
                  else f"on process(es) {failed}; see their logs")
        raise InputDataError(f"reading training data failed after step {step} ({detail}); "
                             f"checkpoint saved at step {step}") from error
    log.warning("training data ran out after %d steps; saved and stopping", step)
    return True


def run_loop(loop: Loop, state: TrainState, step: int) -> LoopResult:
    """Trains from `step` to `loop.train_steps` (or an agreed stop)."""
    first_step = step
    pending: tuple[int, Any] | None = None  # (step, loss) not yet checked for NaN
    while step < loop.train_steps:
        pair, error = _next_pair(loop.batches)
        if pair is None or distributed.is_multiprocess():
            if pending is not None:  # never save a non-finite state
                check_finite(*pending)
                pending = None
            if _stop_for_input(loop, step, state, pair, error):
                break
        host_batch, iterator_state = pair
        state, metrics = loop.train_step(state, loop.shard_batch(host_batch))
        loop.position.consumed += 1
        loop.position.iterator_state = iterator_state
        step += 1
        if pending is not None:  # the previous step's loss, fetched while this one runs
            check_finite(*pending)
        final = step == loop.train_steps
        stop = loop.checkpointer.should_stop(step)
        force = ("log", "checkpoint") if (final or stop) else ()
        if force or loop.hooks.due(step):  # never log, eval or save a non-finite state
            check_finite(step, host_metrics({"loss": metrics["loss"]})["loss"])
            pending = None
        else:
            pending = (step, metrics["loss"])
        loop.hooks.run(StepInfo(step, state, metrics), force=force)
        if step == first_step + 1:
            loop.on_first_step(step, metrics)
        if stop:
            log.warning("preemption: saved a checkpoint at step %d; exiting", step)
            print(f"preempted: checkpoint saved at step {step}", flush=True)
            return LoopResult(step, state, preempted=True)
    return LoopResult(step, state, preempted=False)
