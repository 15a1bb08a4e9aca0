"""Orbax checkpoints: periodic async saves, SIGTERM saves, keep policy, safe restore.

Layout: `MODEL_DIR/checkpoints/<step>/{state, data}`; `state` is the TrainState
(`step`, `params`, `opt_state`), `data` a small JSON with the data position (how many
global train batches were consumed, and the dataset that produced them), so a restarted
run asks its `get_dataset_fn` for exactly the batches an uninterrupted run would see.

Saves are atomic (orbax writes a temporary directory and renames it; a kill mid-write
leaves only the temporary directory, which is never restored). A step directory that
is nonetheless damaged (truncated files, missing metadata: e.g. a copy cut short or a
filesystem without atomic rename) is skipped with a warning, moved to
`MODEL_DIR/corrupt_checkpoints/`, and the previous step is restored instead. A shape
mismatch is not damage: it raises, naming the parameter.

Single-process runs catch SIGTERM themselves (orbax's `reached_preemption` only works
under `jax.distributed`): the loop saves at the next step boundary and exits cleanly.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import signal
import time
import warnings
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp

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
    """
    save_every: int = 1000
    keep: int | None = None
    keep_every: int | None = None
    async_save: bool = True
    save_on_sigterm: bool = True
    restore_from: str | None = None
    restore_step: int | None = None

    def __post_init__(self):
        if self.save_every < 1:
            raise ValueError(f"CheckpointConfig.save_every={self.save_every} must be >= 1")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"CheckpointConfig.keep={self.keep} must be >= 1 or None")


class CheckpointShapeError(ValueError):
    """A checkpoint's tree or shapes do not match the model being trained."""


# ---------------------------------------------------------------------- paths
def _resolve(path: str | pathlib.Path, step: int | None) -> tuple[pathlib.Path, int | None]:
    """(checkpoints directory, step) for a model dir, checkpoints dir or step dir."""
    p = pathlib.Path(path)
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


def _manager(directory: pathlib.Path, cfg: CheckpointConfig | None = None,
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
    if "://" not in str(directory):  # orbax (tensorstore) wants absolute local paths
        directory = pathlib.Path(os.path.abspath(directory))
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
        raise ValueError(f"step {step} has no readable state metadata")
    return getattr(meta, "tree", meta)


# ------------------------------------------------------------------ restoring
def restore_params(path: str | pathlib.Path, step: int | None = None,
                   sharding: Any = None) -> tuple[Any, int]:
    """Loads only the params of a checkpoint (for eval); returns (params, step).

    Args:
      path: MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>.
      step: which step (None: the latest).
      sharding: a jax Sharding (or a tree of them) for the params; default: the first
        local device.
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
    """Flags SIGTERM so the loop can save at the next step boundary and exit."""

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
    """Saves and restores TrainState + data position under MODEL_DIR/checkpoints."""

    def __init__(self, model_dir: str | pathlib.Path, cfg: CheckpointConfig):
        self.cfg = cfg
        self.model_dir = pathlib.Path(model_dir)
        self.directory = self.model_dir / "checkpoints"
        self.manager = _manager(self.directory, cfg)
        self.preemption = PreemptionWatcher(cfg.save_on_sigterm)

    # -------------------------------------------------------------- saving
    def should_stop(self, step: int) -> bool:
        """True when a SIGTERM (or a multi-host preemption notice) arrived."""
        if self.preemption.caught:
            return True
        return jax.process_count() > 1 and self.manager.reached_preemption(step)

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
    def _quarantine(self, step: int, error: Exception) -> None:
        src = self.directory / str(step)
        dst_root = self.model_dir / "corrupt_checkpoints"
        dst_root.mkdir(parents=True, exist_ok=True)
        dst = dst_root / f"{step}.{int(time.time())}"
        warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable "
                      f"({type(error).__name__}: {str(error)[:200]}); skipping it "
                      f"(moved to {dst}) and trying the previous one", RuntimeWarning)
        if jax.process_index() == 0 and src.exists():
            shutil.move(str(src), str(dst))
        self.manager.reload()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest readable checkpoint into `abstract_state`'s shardings.

        Returns (state dict, data position) or None when there is no checkpoint.
        Damaged checkpoints are skipped with a warning; shape mismatches raise.
        """
        target = abstract_state.as_dict()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                saved = _metadata_tree(self.manager, step)
            except Exception as e:  # pylint: disable=broad-except
                self._quarantine(step, e)
                continue
            check_shapes(saved, target, f"checkpoint {self.directory / str(step)}")
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**{
                    STATE: ocp.args.StandardRestore(target),
                    DATA: ocp.args.JsonRestore()}))
            except Exception as e:  # pylint: disable=broad-except
                self._quarantine(step, e)
                continue
            log.info("checkpoint: restored step %d from %s", step, self.directory)
            return restored[STATE], dict(restored[DATA])
        return None

    def restore_params_for_finetune(self, abstract_params: Any) -> Any:
        """Params from `cfg.restore_from`, checked against the model's shapes."""
        directory, step = _resolve(self.cfg.restore_from, self.cfg.restore_step)
        manager = _manager(directory, read_only=True)
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"restore_from={self.cfg.restore_from}: no checkpoints")
        step = max(steps) if step is None else step
        saved = _metadata_tree(manager, step)["params"]
        check_shapes(saved, abstract_params, f"restore_from={self.cfg.restore_from} step {step}")
        params = _restore_params(manager, step, abstract_params)
        manager.close()
        log.info("fine-tuning from %s step %d", directory, step)
        return params
