"""Top-KAST sparse training (Jayakumar et al. 2020) as an optimizer wrapper.

    train.optimizer_fn = @topkast_optimizer          # gin/experiments/topkast*.gin
    topkast_optimizer.inner = @adamw
    TopKastConfig.forward_density = 0.2              # D: 80% sparse forward
    TopKastConfig.backward_extra = 0.1               # M: B = top-(D+M)

Per weight tensor θ (dense kernels and expert stacks; embeddings, the output layer
and vectors such as norm scales only when asked):
- forward set A = the top-D fraction of |θ|; the forward pass sees α = θ ⊙ A;
- backward set B = the top-(D+M) fraction (A ⊆ B); the gradient with respect to α is
  applied to θ on B only, and the optimizer's updates (momentum, weight decay) are
  zeroed outside B, so only B changes;
- exploration regulariser R = c · (Σ_A θ² + Σ_{B∖A} θ² / D), added to the gradient;
- A and B are recomputed from the updated θ every `refresh_every` steps, with the
  density D(t) of `density_schedule` (or the constant `forward_density`).

Units: a tensor is one unit ([D, N, H] attention kernels, [E, D, F] expert stacks),
except that a scanned stack's leading layers axis (scan_layers) gives one unit per
layer. The mask state lives in the optimizer state (`TopKastState.sets`, int8:
2 = in A, 1 = in B∖A, 0 = outside B), so checkpoints keep dense θ and a resumed run
has the same masks bitwise. The trainer (model/trainer.py) sees `forward_params`,
`add_regulariser` and `metrics` on the optimizer and uses them in its train step.

Export for eval: `python -m model.nn.topkast --model_dir=RUN --out_dir=SPARSE` writes
RUN's latest params as θ ⊙ A in the checkpoint layout `model.eval` restores.
In-training eval (EvalHook) sees the dense θ; evaluate the export for the sparse model.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, NamedTuple, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from model import flops as flops_lib
from model.models import DecoderOnlyModel
from model.transformer import SCAN_NAME

IN_A, IN_B_ONLY, OUTSIDE = 2, 1, 0
_EMBEDDING_NAMES = ("embed", "logits")  # the input embedding and the output layer


@gin.configurable
def density_ramp(start: float = 1.0, end: float = 0.2, ramp_steps: int = 1000
                 ) -> optax.Schedule:
    """Forward density falling linearly from `start` to `end` over `ramp_steps`."""
    for name, value in (("start", start), ("end", end)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"density_ramp.{name}={value} must be in (0, 1]")
    return optax.linear_schedule(start, end, ramp_steps)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TopKastConfig:
    """Top-KAST settings (see the module docstring).

    Attributes:
      forward_density: D, the fraction of each unit in the forward set A.
      backward_extra: M, so that B holds the top D+M (capped at 1).
      refresh_every: recompute A and B every N optimizer steps.
      regulariser: the coefficient c of the exploration regulariser (0: off).
      density_schedule: step -> D (e.g. @density_ramp()); overrides forward_density.
      include_embeddings: also sparsify the input embedding and the output layer.
      include_vectors: also sparsify tensors of rank < 2 (norm scales, biases).
    """
    forward_density: float = 0.2
    backward_extra: float = 0.1
    refresh_every: int = 100
    regulariser: float = 1e-4
    density_schedule: Callable[[Any], Any] | None = None
    include_embeddings: bool = False
    include_vectors: bool = False

    def __post_init__(self):
        if not 0.0 < self.forward_density <= 1.0:
            raise ValueError(f"TopKastConfig.forward_density={self.forward_density} must be "
                             "in (0, 1] (0.2 = 80% sparse)")
        if self.backward_extra < 0.0:
            raise ValueError(f"TopKastConfig.backward_extra={self.backward_extra} must be >= 0")
        if self.refresh_every < 1:
            raise ValueError(f"TopKastConfig.refresh_every={self.refresh_every} must be >= 1")
        if self.regulariser < 0.0:
            raise ValueError(f"TopKastConfig.regulariser={self.regulariser} must be >= 0")

    def density(self, step: Any) -> jax.Array:
        """Forward density D at `step` (float32 scalar)."""
        if self.density_schedule is None:
            return jnp.asarray(self.forward_density, jnp.float32)
        return jnp.asarray(self.density_schedule(step), jnp.float32)

    def backward_density(self, step: Any) -> jax.Array:
        return jnp.minimum(self.density(step) + self.backward_extra, 1.0)


class TopKastState(NamedTuple):
    count: jax.Array   # optimizer steps taken, int32 []
    sets: Any          # params-shaped int8: IN_A / IN_B_ONLY / OUTSIDE
    churn: jax.Array   # [U] fraction of each sparse unit's A that is new since the last refresh
    inner: Any         # the wrapped optimizer's state


# ------------------------------------------------------------------ selection
def _keys(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _is_scanned(path) -> bool:
    return SCAN_NAME in _keys(path)


def _is_sparse(cfg: TopKastConfig, path, leaf) -> bool:
    """Whether this parameter is sparsified (its mask is not all-A)."""
    rank = leaf.ndim - _is_scanned(path)
    if rank < 2 and not cfg.include_vectors:
        return False
    if not cfg.include_embeddings and any(k in _EMBEDDING_NAMES for k in _keys(path)):
        return False
    return True


def sparse_paths(cfg: TopKastConfig, params: Any) -> list[str]:
    """'/'-joined paths of the sparsified parameters, in tree order."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return ["/".join(_keys(p)) for p, x in flat if _is_sparse(cfg, p, x)]


def _unit_sets(theta: jax.Array, d_fwd: jax.Array, d_bwd: jax.Array) -> jax.Array:
    """int8 sets of one unit: rank |θ| (stable, so ties are broken by position); the
    top round(D·n) are A, the top round((D+M)·n) are B (so |A| and |B| are exact)."""
    mag = jnp.abs(theta.astype(jnp.float32)).ravel()
    n = mag.size
    order = jnp.argsort(-mag, stable=True)
    ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    k_a = jnp.clip(jnp.round(d_fwd * n), 1, n).astype(jnp.int32)
    k_b = jnp.clip(jnp.round(d_bwd * n), 1, n).astype(jnp.int32)
    sets = (ranks < k_a).astype(jnp.int8) + (ranks < k_b).astype(jnp.int8)
    return sets.reshape(theta.shape)


def compute_sets(cfg: TopKastConfig, params: Any, step: Any) -> Any:
    """The sets of every parameter for the densities at `step` (all-A when dense)."""
    d_fwd, d_bwd = cfg.density(step), cfg.backward_density(step)

    def one(path, theta):
        if not _is_sparse(cfg, path, theta):
            return jnp.full(theta.shape, IN_A, jnp.int8)
        unit = lambda t: _unit_sets(t, d_fwd, d_bwd)
        return jax.vmap(unit)(theta) if _is_scanned(path) else unit(theta)
    return jax.tree_util.tree_map_with_path(one, params)


def _sparse_leaves(cfg: TopKastConfig, params: Any, *trees: Any) -> list[tuple]:
    """[(path, param, *matching leaves of trees)] for the sparsified parameters."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    others = [treedef.flatten_up_to(t) for t in trees]
    return [(p, x, *(o[i] for o in others)) for i, (p, x) in enumerate(flat)
            if _is_sparse(cfg, p, x)]


def _churn(cfg: TopKastConfig, params: Any, old: Any, new: Any) -> jax.Array:
    """[U] fraction of each sparse unit's new A that was not in its old A."""
    out = [jnp.sum((n == IN_A) & (o != IN_A)) / jnp.maximum(jnp.sum(n == IN_A), 1)
           for _, _, o, n in _sparse_leaves(cfg, params, old, new)]
    return jnp.stack(out).astype(jnp.float32) if out else jnp.zeros((0,), jnp.float32)


# ------------------------------------------------------------------ optimizer
class TopKast:
    """An optax-compatible GradientTransformation wrapping `inner` with Top-KAST masks,
    plus the three calls the trainer makes around it (forward_params, add_regulariser,
    metrics)."""

    def __init__(self, inner: optax.GradientTransformation, cfg: TopKastConfig):
        self.inner, self.cfg = inner, cfg

    def init(self, params: Any) -> TopKastState:
        # One tree_map over params builds `sets`, so optax.tree_map_params (the trainer's
        # state shardings) sees it as params-shaped and shards it like the params.
        sets = compute_sets(self.cfg, params, 0)
        n_units = len(_sparse_leaves(self.cfg, params))
        return TopKastState(jnp.zeros((), jnp.int32), sets, jnp.zeros((n_units,), jnp.float32),
                            self.inner.init(params))

    def update(self, grads: Any, state: TopKastState, params: Any = None
               ) -> tuple[Any, TopKastState]:
        if params is None:
            raise ValueError("TopKast.update needs params (to refresh its masks)")
        in_b = lambda s: s != OUTSIDE
        grads = jax.tree.map(lambda g, s: jnp.where(in_b(s), g, 0).astype(g.dtype),
                             grads, state.sets)
        updates, inner = self.inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u, s: jnp.where(in_b(s), u, 0).astype(u.dtype),
                               updates, state.sets)
        count = state.count + 1
        new_params = optax.apply_updates(params, updates)

        def refresh():
            sets = compute_sets(self.cfg, new_params, count)
            return sets, _churn(self.cfg, params, state.sets, sets)

        sets, churn = jax.lax.cond(count % self.cfg.refresh_every == 0, refresh,
                                   lambda: (state.sets, state.churn))
        return updates, TopKastState(count, sets, churn, inner)

    # -- the trainer's calls -------------------------------------------------
    def forward_params(self, params: Any, state: TopKastState) -> Any:
        """α = θ ⊙ A: what the forward pass sees (its gradient is taken w.r.t. α)."""
        return jax.tree.map(lambda p, s: jnp.where(s == IN_A, p, 0).astype(p.dtype),
                            params, state.sets)

    def regulariser(self, params: Any, state: TopKastState) -> jax.Array:
        """R = c · (Σ_A θ² + Σ_{B∖A} θ² / D) over the sparse parameters."""
        d = self.cfg.density(state.count)
        total = jnp.zeros((), jnp.float32)
        for _, p, s in _sparse_leaves(self.cfg, params, state.sets):
            sq = jnp.square(p.astype(jnp.float32))
            total += jnp.sum(jnp.where(s == IN_A, sq, 0.0))
            total += jnp.sum(jnp.where(s == IN_B_ONLY, sq, 0.0)) / d
        return self.cfg.regulariser * total

    def add_regulariser(self, grads: Any, params: Any, state: TopKastState
                        ) -> tuple[Any, dict[str, jax.Array]]:
        """grads + ∇R (w.r.t. θ), and the metric `topkast/regulariser`."""
        value, reg_grads = jax.value_and_grad(self.regulariser)(params, state)
        grads = jax.tree.map(lambda g, r: g + r.astype(g.dtype), grads, reg_grads)
        return grads, {"topkast/regulariser": value}

    def metrics(self, state: TopKastState, params: Any) -> dict[str, jax.Array]:
        """Forward/backward density overall and per group (top-level module, e.g.
        layer_3; a scanned stack is one group 'layers'), and mask churn at the last
        refresh."""
        groups: dict[str, list] = {}
        leaves = _sparse_leaves(self.cfg, params, state.sets)
        for i, (path, p, s) in enumerate(leaves):
            groups.setdefault(_keys(path)[0], []).append((p.size, s, state.churn[i]))
        out: dict[str, jax.Array] = {}
        total = dict(n=0, a=0.0, b=0.0, churn=0.0)
        for name, items in groups.items():
            n = sum(size for size, _, _ in items)
            a = sum(jnp.sum(s == IN_A) for _, s, _ in items)
            b = a + sum(jnp.sum(s == IN_B_ONLY) for _, s, _ in items)
            churn = sum(c * size for size, _, c in items)
            out[f"topkast/density/{name}"] = (a / n).astype(jnp.float32)
            out[f"topkast/churn/{name}"] = (churn / n).astype(jnp.float32)
            for key, value in (("n", n), ("a", a), ("b", b), ("churn", churn)):
                total[key] = total[key] + value
        if total["n"]:
            out["topkast/density"] = (total["a"] / total["n"]).astype(jnp.float32)
            out["topkast/backward_density"] = (total["b"] / total["n"]).astype(jnp.float32)
            out["topkast/churn"] = (total["churn"] / total["n"]).astype(jnp.float32)
        return out

    def flop_densities(self, step: int) -> tuple[float, float]:
        """(forward, backward) density at `step`, for FLOP accounting."""
        return float(self.cfg.density(step)), float(self.cfg.backward_density(step))


@gin.configurable
def topkast_optimizer(learning_rate: optax.Schedule = gin.REQUIRED,
                      inner: Callable[..., optax.GradientTransformation] = gin.REQUIRED,
                      config: TopKastConfig | None = None) -> TopKast:
    """`train.optimizer_fn`: the `inner` optimizer (e.g. @adamw) under Top-KAST masks."""
    return TopKast(inner(learning_rate=learning_rate), config or TopKastConfig())


@gin.configurable
class TopKastModel(DecoderOnlyModel):
    """DecoderOnlyModel whose training FLOPs/token count the sparse passes
    (model.flops.sparse_flops_per_token at the config's final density); bind
    `train.model = @TopKastModel()` next to `train.optimizer_fn = @topkast_optimizer`."""

    def __init__(self, config: Any, sparsity: TopKastConfig | None = None,
                 final_step: int = 10**9):
        super().__init__(config)
        self.sparsity = sparsity or TopKastConfig()
        self.final_step = final_step

    def flops_per_token(self, seq_len: int | None = None) -> float:
        s = self.sparsity
        return flops_lib.sparse_flops_per_token(
            self.config, seq_len or self.config.max_len,
            float(s.density(self.final_step)), float(s.backward_density(self.final_step)),
            sparse_output=s.include_embeddings)


def masked_params(params: Any, sets: Any) -> Any:
    """θ ⊙ A (host or device arrays): the sparse model for eval / export."""
    return jax.tree.map(lambda p, s: np.where(np.asarray(s) == IN_A, np.asarray(p), 0)
                        .astype(np.asarray(p).dtype), params, sets)


# --------------------------------------------------------------------- export
def export_masked(model_dir: str, out_dir: str, step: int | None = None) -> int:
    """Writes model_dir's checkpoint (latest or `step`) as θ ⊙ A under out_dir (the
    checkpoint layout `model.checkpointing.restore_params` and `model.eval` read);
    returns the step. Reads the saved tree without a target (host numpy arrays)."""
    import orbax.checkpoint as ocp

    from model import fs
    from model.checkpointing import STATE, CheckpointConfig, Checkpointer

    src = Checkpointer(model_dir, CheckpointConfig(async_save=False, save_on_sigterm=False))
    try:
        step = max(src.manager.all_steps()) if step is None else step
        restored = src.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore()}))[STATE]
    finally:
        src.close()
    sets = _find_sets(restored["opt_state"])
    params = masked_params(restored["params"], sets)
    dst = Checkpointer(fs.path(out_dir), CheckpointConfig(async_save=False,
                                                          save_on_sigterm=False))
    try:
        from model.trainer import TrainState
        dst.save(step, TrainState(step=np.asarray(step, np.int32), params=params,
                                  opt_state={}), {"exported_from": str(model_dir),
                                                  "topkast_masked": True})
    finally:
        dst.close()
    return step


def _find_sets(opt_state: Any) -> Any:
    """The `sets` subtree of a restored TopKastState (a dict, list or the tuple)."""
    if isinstance(opt_state, TopKastState):
        return opt_state.sets
    if isinstance(opt_state, dict) and "sets" in opt_state:
        return opt_state["sets"]
    if isinstance(opt_state, (list, tuple)) and len(opt_state) == len(TopKastState._fields):
        return opt_state[TopKastState._fields.index("sets")]
    raise ValueError("this checkpoint's optimizer state holds no Top-KAST masks "
                     "(was it trained with train.optimizer_fn = @topkast_optimizer?)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a Top-KAST run's masked params.")
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--step", type=int, default=None)
    args = parser.parse_args(argv)
    step = export_masked(args.model_dir, args.out_dir, args.step)
    print(f"exported step {step} of {args.model_dir} (θ ⊙ A) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
