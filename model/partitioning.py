"""One device mesh, logical axis rules, and the shardings the trainer jits with.

The mesh always has the axes ('data', 'expert', 'model'); sizes come from gin, with
at most one -1 meaning "all remaining devices". The model names the dimensions of its
parameters and key activations logically ('batch', 'embed', 'mlp', 'heads', ...);
`logical_axis_rules` (gin) maps those names to mesh axes. Names without a rule stay
unsharded. Batches are split over ('data', 'expert') on their leading dimension.

FSDP (`fsdp=True`) additionally shards every parameter (and so every optimizer
moment) over 'data' on its largest dimension that is still unsharded and divisible by
the data-axis size: ZeRO-3 style, the compiler all-gathers weights where they are used.

Multi-host: call `initialize_distributed()` (gin-configurable, no-op on one process)
before touching devices; every host then feeds only its own rows
(global batch / process_count) and `shard_batch` assembles the global array.

Example (8 CPU devices): `Partitioner(mesh_shape=(2, 2, 2))` gives data=2, expert=2,
model=2; `Partitioner(mesh_shape=(-1, 1, 1))` is plain data parallelism over all 8.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "expert", "model")
# Optional 4th mesh axis: one sequence split over it (model/nn/context_parallel.py).
CONTEXT_AXIS = "context"
BATCH_AXES = ("data", "expert")

# Logical name -> mesh axis (or axes, or None). Overridable from gin.
# Rules are in priority order and a mesh axis is used once per array: 'expert' comes
# first so the MoE's dispatched tokens [E, B*C, D] ('expert', 'batch', 'embed') put E on
# 'expert' and fall back to rows over 'data' (the second 'batch' rule), while plain
# activations [B, T, D] still split rows over ('data', 'expert').
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("expert", "expert"),
    ("batch", BATCH_AXES),
    ("batch", "data"),
    ("length", None),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("head_dim", None),
    ("vocab", "model"),
    ("layers", None),
)

log = logging.getLogger("tapestry.partitioning")


@gin.configurable
def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           enabled: bool = False,
                           heartbeat_timeout_s: int | None = None,
                           init_timeout_s: int | None = None) -> None:
    """`jax.distributed.initialize` for multi-host runs (TPU pods, multi-node GPU).

    On when `enabled=True` or when the environment names a job of several processes
    (`JAX_NUM_PROCESSES`, as `model.launch_local` sets it). Arguments left None come
    from the environment: JAX_COORDINATOR_ADDRESS (and JAX_COORDINATOR_BIND_ADDRESS,
    both read by JAX itself), JAX_NUM_PROCESSES, JAX_PROCESS_ID,
    TAPESTRY_DIST_HEARTBEAT_TIMEOUT_S, TAPESTRY_DIST_INIT_TIMEOUT_S; then, on TPU pods
    and SLURM/Open MPI clusters, from JAX's own cluster detection. Timeouts default to
    JAX's (100 s heartbeat: a dead peer aborts the others after that long; 300 s init).
    Flags work too: `--gin.initialize_distributed.process_id=1`.
    """
    env = os.environ
    env_processes = _env_int("JAX_NUM_PROCESSES")
    if not enabled and (env_processes or 1) <= 1:
        return
    kwargs: dict[str, Any] = {}
    heartbeat = heartbeat_timeout_s or _env_int("TAPESTRY_DIST_HEARTBEAT_TIMEOUT_S")
    init_timeout = init_timeout_s or _env_int("TAPESTRY_DIST_INIT_TIMEOUT_S")
    if heartbeat:
        kwargs["heartbeat_timeout_seconds"] = heartbeat
    if init_timeout:
        kwargs["initialization_timeout"] = init_timeout
    jax.distributed.initialize(
        coordinator_address=coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
        num_processes=num_processes if num_processes is not None else env_processes,
        process_id=process_id if process_id is not None else _env_int("JAX_PROCESS_ID"),
        **kwargs)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 with the remaining device count; validates the product."""
    shape = tuple(int(s) for s in mesh_shape)
    if len(shape) not in (len(MESH_AXES), len(MESH_AXES) + 1):
        raise ValueError(f"mesh_shape={shape} must have {len(MESH_AXES)} entries for axes "
                         f"{MESH_AXES}, e.g. (-1, 1, 1), or 4 with a last "
                         f"{CONTEXT_AXIS!r} axis (context parallelism)")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh_shape={shape}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh_shape={shape}: {num_devices} devices are not divisible "
                             f"by the fixed axes' product {known}")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh_shape={shape} uses {math.prod(shape)} devices but "
                         f"{num_devices} are available; use -1 for one axis or set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count=N on CPU")
    return shape


@gin.configurable
class Partitioner:
    """Mesh + logical rules; turns logical param specs into NamedShardings and jits.

    Args:
      mesh_shape: sizes of ('data', 'expert', 'model'); one may be -1.
      logical_axis_rules: sequence of (logical_name, mesh_axis | tuple | None).
      fsdp: also shard parameters over 'data' (see module docstring).
      num_devices: use only the first N devices (default: all). For tests and
        single-device baselines.
    """

    def __init__(self, mesh_shape: Sequence[int] = (-1, 1, 1),
                 logical_axis_rules: Sequence[tuple[str, Any]] = DEFAULT_LOGICAL_AXIS_RULES,
                 fsdp: bool = False, num_devices: int | None = None):
        devices = jax.devices()
        if num_devices is not None:
            if not 0 < num_devices <= len(devices):
                raise ValueError(f"num_devices={num_devices}, but {len(devices)} are available")
            devices = devices[:num_devices]
        shape = resolve_mesh_shape(mesh_shape, len(devices))
        axes_names = MESH_AXES + ((CONTEXT_AXIS,) if len(shape) > len(MESH_AXES) else ())
        for name, axes in logical_axis_rules:
            for axis in (axes if isinstance(axes, (tuple, list)) else (axes,)):
                if axis is not None and axis not in axes_names:
                    raise ValueError(f"logical_axis_rules: {name!r} -> {axis!r}; mesh axes "
                                     f"are {axes_names} (or None)")
        self.rules = tuple((name, tuple(a) if isinstance(a, list) else a)
                           for name, a in logical_axis_rules)
        self.fsdp = fsdp
        self._reported: set[str] = set()  # param dims already warned about
        device_array = np.asarray(devices).reshape(shape)
        if len(devices) == jax.device_count() and jax.process_count() > 1:
            from jax.experimental import mesh_utils  # topology-aware order on pods
            device_array = mesh_utils.create_device_mesh(shape, devices=devices)
        self.mesh = Mesh(device_array, axes_names)

    # ----------------------------------------------------------------- sizes
    @property
    def mesh_shape(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def num_batch_shards(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["expert"]

    def validate_batch_size(self, batch_size: int, num_microbatches: int = 1) -> None:
        """Batch must split over processes, batch shards and microbatches evenly."""
        if batch_size % jax.process_count():
            raise ValueError(f"Batch size ({batch_size}) must be divisible by the number of "
                             f"processes ({jax.process_count()}).")
        per_micro, rem = divmod(batch_size, num_microbatches)
        if rem:
            raise ValueError(f"Batch size ({batch_size}) must be divisible by "
                             f"num_microbatches ({num_microbatches}).")
        if per_micro % self.num_batch_shards:
            raise ValueError(
                f"Batch size per microbatch ({per_micro}) must be divisible by the number of "
                f"batch shards data*expert ({self.num_batch_shards}); change BATCH_SIZE, "
                f"num_microbatches or mesh_shape {tuple(self.mesh.shape.values())}.")

    # -------------------------------------------------------------- shardings
    def _fsdp_spec(self, spec: P, shape: Sequence[int]) -> P:
        """Adds 'data' to the largest unsharded, divisible dim of a param spec."""
        data = self.mesh.shape["data"]
        parts = list(spec) + [None] * (len(shape) - len(spec))
        used = {a for p in parts for a in (p if isinstance(p, tuple) else (p,)) if a}
        if data == 1 or "data" in used:
            return P(*parts)
        candidates = [i for i, p in enumerate(parts) if p is None and shape[i] % data == 0]
        if candidates:
            parts[max(candidates, key=lambda i: shape[i])] = "data"
        return P(*parts)

    def _fit_spec(self, spec: P, shape: Sequence[int], name: str, dropped: list[str]) -> P:
        """Unshards dims whose size the mapped mesh axes do not divide (e.g. 1 kv head
        on a model axis of 2), noting them in `dropped`."""
        parts = list(spec) + [None] * (len(shape) - len(spec))
        for i, part in enumerate(parts):
            axes = part if isinstance(part, tuple) else (part,)
            size = math.prod(self.mesh.shape[a] for a in axes if a)
            if part is not None and shape[i] % size:
                dropped.append(f"{name} dim {i} ({shape[i]}) over {part} ({size})")
                parts[i] = None
        return P(*parts)

    def param_specs(self, abstract_params: Any) -> Any:
        """Mesh PartitionSpecs for a tree of (boxed or plain) abstract params.

        Boxed leaves (nn.Partitioned / LogicallyPartitioned) use their logical names;
        plain leaves are replicated (or FSDP-sharded).
        """
        logical = nn.get_partition_spec(abstract_params)
        mesh_specs = nn.logical_to_mesh(logical, self.rules)
        plain = nn.meta.unbox(abstract_params)
        dropped: list[str] = []
        mesh_specs = jax.tree_util.tree_map_with_path(
            lambda path, s, x: self._fit_spec(s, x.shape, jax.tree_util.keystr(path), dropped),
            mesh_specs, plain, is_leaf=lambda s: isinstance(s, P))
        dropped = [d for d in dropped if d not in self._reported]
        self._reported.update(dropped)
        if dropped:
            log.warning("replicated %d parameter dims that the mesh does not divide: %s",
                        len(dropped), "; ".join(dropped[:8]))
        if self.fsdp:
            mesh_specs = jax.tree.map(lambda s, x: self._fsdp_spec(s, x.shape), mesh_specs,
                                      plain, is_leaf=lambda s: isinstance(s, P))
        return mesh_specs

    def shardings(self, specs: Any) -> Any:
        """PartitionSpec tree -> NamedSharding tree on this mesh."""
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s), specs,
                            is_leaf=lambda s: isinstance(s, P))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) dim over ('data', 'expert'); the other dims replicated."""
        return NamedSharding(self.mesh, P(BATCH_AXES))

    def batch_shardings(self, batch: dict[str, Any]) -> dict[str, NamedSharding]:
        """Rows over the batch axes; with a 'context' axis, [B, L] arrays also split L."""
        if self.mesh.shape.get(CONTEXT_AXIS, 1) == 1:
            return {k: self.batch_sharding() for k in batch}
        seq = NamedSharding(self.mesh, P(BATCH_AXES, CONTEXT_AXIS))
        return {k: seq if len(v.shape) == 2 else self.batch_sharding() for k, v in batch.items()}

    def shard_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This host's rows (global / process_count) -> globally sharded jax.Arrays."""
        if jax.process_count() == 1:  # one batched transfer: about half the host time
            return jax.device_put(local_batch, self.batch_shardings(local_batch))
        shardings = self.batch_shardings(local_batch)
        return {k: jax.make_array_from_process_local_data(shardings[k], v)
                for k, v in local_batch.items()}

    # ------------------------------------------------------------------- jit
    def jit(self, fn: Callable, *, in_shardings: Any = None, out_shardings: Any = None,
            donate_argnums: Sequence[int] = ()) -> Callable:
        """jax.jit with explicit shardings, traced under this mesh and the logical rules
        (so the model's `nn.with_logical_constraint` calls resolve)."""
        kwargs = {}
        if in_shardings is not None:
            kwargs["in_shardings"] = in_shardings
        if out_shardings is not None:
            kwargs["out_shardings"] = out_shardings
        jitted = jax.jit(fn, donate_argnums=tuple(donate_argnums), **kwargs)

        def call(*args):
            with self.context():
                return jitted(*args)

        call.lower = lambda *args: self._lower(jitted, *args)  # type: ignore[attr-defined]
        return call

    def _lower(self, jitted, *args):
        with self.context():
            return jitted.lower(*args)

    @contextlib.contextmanager
    def context(self):
        """Context manager: this mesh and the logical axis rules."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield
