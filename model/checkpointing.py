"""Orbax checkpoints: periodic async saves, SIGTERM saves, keep policy, safe restore.

Layout: `MODEL_DIR/checkpoints/<step>/{state, data}`; `state` is the TrainState
(`step`, `params`, `opt_state`), `data` a small JSON with the data position (how many
global train batches were consumed, and the dataset that produced them), so a restarted
run asks its `get_dataset_fn` for exactly the batches an uninterrupted run would see.

Saves are atomic (orbax writes a temporary directory and renames it; a kill mid-write
leaves only the temporary directory, which is never restored). A step directory that
is nonetheless damaged (truncated files, missing metadata: e.g. a copy cut short or a
filesystem without atomic rename; `damage_signature`) is skipped with a warning, moved
to `MODEL_DIR/corrupt_checkpoints/` (by process 0, the others at a barrier), and the
previous step is restored instead. Anything else (an I/O blip, an OOM) is raised and
moves nothing; a shape mismatch raises naming the parameter; checkpoints that exist but
all fail to restore raise CheckpointRestoreError rather than restarting at step 0.
All processes agree on each verdict (one process failing is every process failing).

Single-process runs catch SIGTERM themselves (orbax's `reached_preemption` only works
under `jax.distributed`): the loop saves at the next step boundary and exits cleanly.
Under `jax.distributed` the runtime's preemption notifier keeps SIGTERM, and JAX's
preemption sync point gives every process the same step to save at.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
import warnings
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath

from model import distributed, fs

STATE, DATA = "state", "data"

log = logging.getLogger("tapestry.checkpointing")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """When to save, what to keep, where to start from.

    Attributes:
      save_every: save every N steps (and at the last step).
      keep: keep at most this many recent checkpoints (None: all).
      keep_every: additionally keep every step that is a multiple of this (None: off).
      async_save: write in a background thread while training continues.
      save_on_sigterm: on SIGTERM, save at the next step boundary and exit cleanly.
      restore_from: fine-tuning: initialise params from this checkpoint (a model dir,
        its `checkpoints/` dir, or a step dir) when MODEL_DIR has no checkpoint yet.
      restore_step: the step of `restore_from` (None: latest).
      init_missing: top-level param names (prefixes) that may be absent from
        `restore_from` and keep their fresh initialisation, e.g. ('retro_',) to start
        RETROfit from a plain decoder's checkpoint. Any other difference is an error.
    """
    save_every: int = 1000
    keep: int | None = None
    keep_every: int | None = None
    async_save: bool = True
    save_on_sigterm: bool = True
    restore_from: str | None = None
    restore_step: int | None = None
    init_missing: tuple[str, ...] = ()

    def __post_init__(self):
        if self.save_every < 1:
            raise ValueError(f"CheckpointConfig.save_every={self.save_every} must be >= 1")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"CheckpointConfig.keep={self.keep} must be >= 1 or None")


class CheckpointShapeError(ValueError):
    """A checkpoint's tree or shapes do not match the model being trained."""


class CheckpointDamagedError(ValueError):
    """A step directory is missing parts that every complete checkpoint has."""


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist but none could be restored (training will not restart at 0)."""


# Errors that mean "these bytes are damaged", as opposed to "reading failed right now"
# (UNAVAILABLE, DEADLINE_EXCEEDED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, an OOM):
# only the first kind sends a step to corrupt_checkpoints/; anything else is re-raised.
_DAMAGE_TYPES = (CheckpointDamagedError, json.JSONDecodeError, FileNotFoundError)
_DAMAGE_CODES = ("OUT_OF_RANGE:", "DATA_LOSS:", "NOT_FOUND:")  # tensorstore status codes


def damage_signature(error: BaseException) -> str | None:
    """What in `error` (or its causes) marks a damaged checkpoint; None if nothing."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, _DAMAGE_TYPES):
            return type(error).__name__
        text = str(error)
        for code in _DAMAGE_CODES:
            if code in text:
                return code.rstrip(":")
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


# ---------------------------------------------------------------------- paths
def _resolve(path: fs.PathLike, step: int | None) -> tuple[epath.Path, int | None]:
    """(checkpoints directory, step) for a model dir, checkpoints dir or step dir."""
    p = fs.path(path)
    if (p / "checkpoints").is_dir():
        return p / "checkpoints", step
    if p.name.isdigit() and (p / STATE).exists():
        if step is not None and step != int(p.name):
            raise ValueError(f"{p} is step {p.name}, but step={step} was asked for")
        return p.parent, int(p.name)
    if p.is_dir():
        return p, step
    raise FileNotFoundError(f"no checkpoint at {p}: expected MODEL_DIR, "
                            f"MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>")


def _manager(directory: fs.PathLike, cfg: CheckpointConfig | None = None,
             read_only: bool = False) -> ocp.CheckpointManager:
    """A manager for our two items; read-only ones use the PyTree handler (same
    on-disk format) so they can restore a subtree (`_restore_params`)."""
    cfg = cfg or CheckpointConfig()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, keep_period=cfg.keep_every,
        enable_async_checkpointing=cfg.async_save and not read_only,
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
    state_handler = (ocp.PyTreeCheckpointHandler() if read_only
                     else ocp.StandardCheckpointHandler())
    handlers = {STATE: state_handler, DATA: ocp.JsonCheckpointHandler()}
    directory = fs.path(directory)  # absolute when local (tensorstore needs it); gs:// as is
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _shape_tree(tree: Any) -> dict[str, tuple[int, ...]]:
    """'a/b/c' -> shape; namedtuple fields and dict keys name alike (orbax metadata
    stores namedtuples as dicts)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(e) for e in path): tuple(v.shape) for path, v in flat}


def check_shapes(saved: Any, expected: Any, what: str) -> None:
    """Raises CheckpointShapeError listing missing/extra/mismatched leaves."""
    got, want = _shape_tree(saved), _shape_tree(expected)
    problems = [f"  {k}: checkpoint {got[k]} vs model {want[k]}"
                for k in sorted(want) if k in got and got[k] != want[k]]
    problems += [f"  {k}: missing from checkpoint" for k in sorted(set(want) - set(got))]
    problems += [f"  {k}: in checkpoint, not in model" for k in sorted(set(got) - set(want))]
    if problems:
        shown = "\n".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise CheckpointShapeError(
            f"{what} does not match the model ({len(problems)} differences):\n{shown}\n"
            f"Use the same model preset as the checkpoint, or start without restore_from.")


def _metadata_tree(manager: ocp.CheckpointManager, step: int) -> Any:
    meta = manager.item_metadata(step)[STATE]
    if meta is None:
        raise CheckpointDamagedError(f"step {step} has no readable state metadata")
    return getattr(meta, "tree", meta)


# ------------------------------------------------------------------ restoring
def restore_params(path: fs.PathLike, step: int | None = None,
                   sharding: Any = None, target: Any = None) -> tuple[Any, int]:
    """Loads only the params of a checkpoint (for eval); returns (params, step).

    Elastic: the checkpoint holds global arrays, so it restores onto any mesh and any
    number of processes, whatever mesh and process count wrote it; each process reads
    only the slices its devices hold.

    Args:
      path: MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>.
      step: which step (None: the latest).
      sharding: a jax Sharding (or a tree of them) for the params; default: the first
        local device.
      target: instead of `sharding`, the model's abstract params (ShapeDtypeStructs with
        shardings, e.g. from `Partitioner.param_specs`); shapes are checked against the
        checkpoint (CheckpointShapeError names the differing parameters).
    """
    directory, step = _resolve(path, step)
    manager = _manager(directory, read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints under {directory}")
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"step {step} not under {directory}; available: {sorted(steps)}")
    params_meta = _metadata_tree(manager, step)["params"]
    if target is not None:
        check_shapes(params_meta, target, f"checkpoint {directory / str(step)}")
    else:
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        if sharding is None or isinstance(sharding, jax.sharding.Sharding):
            sharding = jax.tree.map(lambda _: sharding or default, params_meta)
        target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                              params_meta, sharding)
    params = _restore_params(manager, step, target)
    manager.close()
    return params, step


def _restore_params(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
    """Only the `params` subtree of a step, into `target`'s shapes and shardings."""
    item = {"params": target}
    restored = manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(item))}))
    return restored[STATE]["params"]


class PreemptionWatcher:
    """Flags SIGTERM so the loop can save at the next step boundary and exit.

    Only for single-process runs: under `jax.distributed` the runtime's own notifier
    owns SIGTERM (replacing it would leave the other hosts running), and
    `Checkpointer.should_stop` asks JAX's preemption sync point instead."""

    def __init__(self, enabled: bool = True):
        self._caught = False
        self._previous = None
        if enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame  # signal handler API
        self._caught = True

    @property
    def caught(self) -> bool:
        return self._caught

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class Checkpointer:
    """Saves and restores TrainState + data position under MODEL_DIR/checkpoints.

    Every process of a job calls every method at the same step (each writes and reads
    its own shards); restore decisions are agreed across processes."""

    def __init__(self, model_dir: str | os.PathLike, cfg: CheckpointConfig):
        self.cfg = cfg
        self.model_dir = fs.path(model_dir)
        self.directory = self.model_dir / "checkpoints"
        self.manager = _manager(self.directory, cfg)
        self.preemption = PreemptionWatcher(cfg.save_on_sigterm
                                            and not distributed.is_multiprocess())

    # -------------------------------------------------------------- saving
    def should_stop(self, step: int) -> bool:
        """True when a SIGTERM (or a multi-host preemption notice) arrived; under
        jax.distributed every process gets True at the same step. Call every step."""
        if self.preemption.caught:
            return True
        return (distributed.is_multiprocess() and self.cfg.save_on_sigterm
                and self.manager.reached_preemption(step))

    def save(self, step: int, state: Any, data_position: dict[str, Any]) -> bool:
        """Saves `state` (a TrainState) at `step` unless that step already exists."""
        if step in self.manager.all_steps():
            return False
        saved = self.manager.save(step, force=True, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state.as_dict()),
            DATA: ocp.args.JsonSave(dict(data_position, step=step))}))
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        self.preemption.close()

    # ----------------------------------------------------------- restoring
    def latest_data_position(self) -> dict[str, Any] | None:
        """The data position saved with the newest step (None: no checkpoint, or its
        position is unreadable; `restore_latest` then decides what to restore)."""
        steps = self.manager.all_steps()
        if not steps:
            return None
        try:
            restored = self.manager.restore(max(steps), args=ocp.args.Composite(**{
                DATA: ocp.args.JsonRestore()}))
            return dict(restored[DATA])
        except Exception as e:  # pylint: disable=broad-except
            log.warning("data position of step %d unreadable (%s)", max(steps), e)
            return None

    def _quarantine(self, step: int, error: BaseException, signature: str) -> None:
        """Moves a damaged step to MODEL_DIR/corrupt_checkpoints/ (process 0; the others
        wait at a barrier) so the run can fall back to the previous one."""
        dst = self.model_dir / "corrupt_checkpoints" / f"{step}.{int(time.time())}"
        warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable "
                      f"({signature}: {type(error).__name__}: {str(error)[:200]}); skipping "
                      f"it (moved to {dst}) and trying the previous one", RuntimeWarning)
        src = self.directory / str(step)
        if jax.process_index() == 0 and src.exists():
            fs.rename(src, dst)  # object stores: copy + delete
        distributed.barrier(f"quarantine-{step}")
        self.manager.reload()

    def _agree(self, step: int, error: BaseException | None) -> str | None:
        """All processes' verdict on restoring `step`: None (restored everywhere), a
        damage signature (quarantine), or raises (a failure that is not damage)."""
        signature = damage_signature(error) if error is not None else None
        flags = distributed.gather_flags([signature is not None,
                                          error is not None and signature is None])
        if flags[:, 1].any():
            if error is not None and signature is None:
                raise error
            raise CheckpointRestoreError(
                f"restoring checkpoint step {step} failed on process(es) "
                f"{list(map(int, flags[:, 1].nonzero()[0]))}; see their logs")
        if flags[:, 0].any():
            return signature or "damaged on another process"
        return None

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest readable checkpoint into `abstract_state`'s shardings.

        Returns (state dict, data position) or None when there is no checkpoint.
        Steps with a recognised damage signature (`damage_signature`) are moved aside
        with a warning and the previous step is tried; any other error is raised, as is
        a shape mismatch, and so is finding checkpoints of which none restores
        (CheckpointRestoreError: the run never silently restarts at step 0).
        """
        target = abstract_state.as_dict()
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged = []
        for step in steps:
            error: BaseException | None = None
            restored = None
            try:
                saved = _metadata_tree(self.manager, step)
            except Exception as e:  # pylint: disable=broad-except
                error = e
            if error is None:
                check_shapes(saved, target, f"checkpoint {self.directory / str(step)}")
                try:
                    restored = self.manager.restore(step, args=ocp.args.Composite(**{
                        STATE: ocp.args.StandardRestore(target),
                        DATA: ocp.args.JsonRestore()}))
                except Exception as e:  # pylint: disable=broad-except
                    error = e
            signature = self._agree(step, error)
            if signature is None:
                log.info("checkpoint: restored step %d from %s", step, self.directory)
                return restored[STATE], dict(restored[DATA])
            self._quarantine(step, error or RuntimeError("see the other processes"), signature)
            damaged.append(step)
        if damaged:
            raise CheckpointRestoreError(
                f"none of the {len(damaged)} checkpoints under {self.directory} (steps "
                f"{damaged}) could be restored; they were moved to "
                f"{self.model_dir / 'corrupt_checkpoints'}. Refusing to restart from step 0: "
                f"restore them, or point MODEL_DIR elsewhere to start afresh.")
        return None

    def restore_params_for_finetune(self, abstract_params: Any, fresh_params: Any = None
                                    ) -> Any:
        """Params from `cfg.restore_from`, checked against the model's shapes; top-level
        params named by `cfg.init_missing` and absent there come from `fresh_params`."""
        directory, step = _resolve(self.cfg.restore_from, self.cfg.restore_step)
        manager = _manager(directory, read_only=True)
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"restore_from={self.cfg.restore_from}: no checkpoints")
        step = max(steps) if step is None else step
        saved = _metadata_tree(manager, step)["params"]
        fresh = sorted(k for k in abstract_params if k not in saved
                       and any(str(k).startswith(p) for p in self.cfg.init_missing))
        if fresh and fresh_params is None:
            raise ValueError(f"init_missing params {fresh} need fresh_params")
        target = {k: v for k, v in abstract_params.items() if k not in fresh}
        check_shapes(saved, target, f"restore_from={self.cfg.restore_from} step {step}")
        params = _restore_params(manager, step, target)
        manager.close()
        if fresh:
            params = {**params, **{k: fresh_params[k] for k in fresh}}
            log.info("kept the fresh initialisation of %s (CheckpointConfig.init_missing)", fresh)
        log.info("fine-tuning from %s step %d", directory, step)
        return params
