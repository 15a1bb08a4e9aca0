"""Evaluation on a device mesh, from one process or many (SPMD, as training).

    runner = MeshRunner(model, Partitioner(), max_length=1024)
    params = runner.restore(checkpoint_path, step)   # sharded by the partitioner rules
    scorer = BatchedScorer(runner.score_fn(params), max_length, batch_size)

Every process runs the same eval program on the same requests with the same batch plan
(`scoring.plan_batches` is deterministic), so every jitted call is a collective all
processes enter together. A batch's rows [B, ...] are split over the mesh's batch axes
('data', 'expert'): each device, and so each host, computes only its own rows; scores
come back replicated, every process holds every request's score, and only process 0
writes files (`Collective.writer`). Rows are padded with all-zero rows (segment id 0,
nothing scored) up to a multiple of data*expert, so any batch size runs on any mesh.

Parameters are placed by the partitioner's rules (`Partitioner.param_specs`): restored
straight into their shards (orbax reads only each host's slices) or initialised inside
a jit with those output shardings, so a preset larger than one device can be evaluated.

Numerics: a row's scores depend only on that row (no op mixes rows; an MoE routes each
row as its own group, padding is never routed and a row's capacity counts its real
tokens), so a mesh changes them only through XLA's kernels for the per-device shapes
(~1e-6). With `rows_per_device=N` every call gives each device N rows, the same shapes
on any mesh size, and on meshes with 'model' = 'expert' = 1 the scores are bit-identical
to one device's (tests/test_eval_multiprocess.py).
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from model import checkpointing
from model.evaluation import scoring
from model.partitioning import Partitioner


def _to_host(x: jax.Array) -> np.ndarray:
    """A replicated (or single-process) jax.Array as numpy on this host."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(x.addressable_data(0))  # replicated: every local copy is the whole


class Collective:
    """Who writes, and agreement points between the processes of one eval run."""

    @property
    def writer(self) -> bool:
        """Only process 0 writes results, samples and the report."""
        return jax.process_index() == 0

    @staticmethod
    def agree(what: str, value: str = "") -> None:
        """A barrier at which every process must hold the same `value`, else ValueError
        (e.g. different eval inputs on different hosts would deadlock the collectives)."""
        if jax.process_count() == 1:
            return
        from jax.experimental import multihost_utils
        digest = np.frombuffer(hashlib.sha256(f"{what}\0{value}".encode()).digest(), np.uint8)
        try:
            multihost_utils.assert_equal(digest, f"processes disagree on {what}")
        except AssertionError as e:
            raise ValueError(f"{e}: every host must see the same eval inputs and the same "
                             "output dir (a filesystem shared by all hosts, e.g. gs://)") from None


class MeshRunner:
    """A model's eval functions (score, candidate log-probs, greedy decode) on a mesh."""

    def __init__(self, model: Any, partitioner: Partitioner, max_length: int,
                 rows_per_device: int | None = None):
        if rows_per_device is not None and rows_per_device < 1:
            raise ValueError(f"rows_per_device={rows_per_device} must be >= 1 or None")
        self.rows_per_device = rows_per_device
        self.model = model
        self.partitioner = partitioner
        dummy = scoring.build_batch([], max_length, 1)
        self._dummy = dummy
        boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)
        specs = partitioner.param_specs(boxed)
        self.param_shardings = partitioner.shardings(specs)
        self.abstract_params = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.meta.unbox(boxed), self.param_shardings)
        self.rows = partitioner.batch_sharding()  # leading dim over ('data', 'expert')
        self.replicated = partitioner.replicated()
        self._identity = partitioner.jit(lambda x: x, out_shardings=self.replicated)

    # ------------------------------------------------------------- params
    def restore(self, path: str, step: int | None) -> tuple[Any, int]:
        """Checkpoint params straight into their shardings on this mesh (elastic: the
        checkpoint may come from any mesh and process count); returns (params, step)."""
        return checkpointing.restore_params(path, step, target=self.abstract_params)

    def init(self, seed: int) -> Any:
        """Freshly initialised params (the untrained model), created in their shards."""

        def init(rng, batch):
            return nn.meta.unbox(self.model.init(rng, batch))

        fn = self.partitioner.jit(init, out_shardings=self.param_shardings)
        return fn(self._global(np.asarray(jax.random.PRNGKey(seed)), self.replicated),
                  {k: self._global(v, self.replicated) for k, v in self._dummy.items()})

    def place(self, params: Any) -> Any:
        """Host/single-device params (same on every process) -> sharded on the mesh."""
        params = nn.meta.unbox(params)
        return jax.tree.map(lambda x, s: self._global(np.asarray(x), s), params,
                            self.param_shardings)

    # ------------------------------------------------------------- batches
    @property
    def num_row_shards(self) -> int:
        return self.partitioner.num_batch_shards

    def _global(self, x: np.ndarray, sharding: NamedSharding) -> jax.Array:
        """A global array from the full value every process holds (each host transfers
        only its own shards)."""
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    def rows_per_call(self, rows: int) -> int:
        """Global rows of one jitted call: `rows_per_device` x batch shards, else all
        `rows` rounded up to a multiple of the batch shards."""
        s = self.num_row_shards
        return s * self.rows_per_device if self.rows_per_device else -(-rows // s) * s

    def _map_rows(self, fn: Callable[..., jax.Array], *trees: Any) -> np.ndarray:
        """fn over numpy trees [B, ...], `rows_per_call` rows at a time, each call's rows
        split over the batch shards; -> numpy [B, ...] (padding rows dropped)."""
        b = jax.tree.leaves(trees)[0].shape[0]
        per_call = self.rows_per_call(b)
        padded = -(-b // per_call) * per_call

        def pad(x):
            x = np.asarray(x)
            return np.concatenate([x, np.zeros((padded - b,) + x.shape[1:], x.dtype)])

        trees = jax.tree.map(pad, trees) if padded != b else trees
        outs = []
        for start in range(0, padded, per_call):
            chunk = jax.tree.map(lambda x: self._global(x[start:start + per_call], self.rows),
                                 trees)
            outs.append(_to_host(fn(*chunk)))
        return np.concatenate(outs)[:b]

    # ------------------------------------------------------------- functions
    def score_fn(self, params: Any) -> scoring.ScoreFn:
        """(batch, positions [B, P]) -> numpy [B, P] log p(target) at those positions."""
        jitted = self.partitioner.jit(
            self.model.score_positions, in_shardings=(self.param_shardings, self.rows, self.rows),
            out_shardings=self.replicated)
        return lambda batch, positions: self._map_rows(
            lambda b, p: jitted(params, b, p), batch, positions)

    def candidate_fn(self, params: Any) -> scoring.CandidateFn:
        """(batch, positions [B, P], ids [B, P, C]) -> numpy log-probs [B, P, C]."""
        model = self.model

        def f(params, batch, positions, ids):
            logp = jax.nn.log_softmax(model.logits_at(params, batch, positions), axis=-1)
            return jnp.take_along_axis(logp, ids, axis=-1)

        jitted = self.partitioner.jit(
            f, in_shardings=(self.param_shardings, self.rows, self.rows, self.rows),
            out_shardings=self.replicated)
        return lambda batch, positions, ids: self._map_rows(
            lambda b, p, i: jitted(params, b, p, i), batch, positions, ids)

    def generate_fn(self, params: Any, prompt_batch: Callable[..., dict[str, np.ndarray]]
                    ) -> Callable[..., list[list[int]]]:
        """Greedy decoding (`model.decoding.generate`) with the prompt rows sharded:
        ([(prompt ids, media features)], max_new_tokens) -> new token ids per prompt.
        `prompt_batch` turns all prompts into one right-padded batch first, so a row
        decodes alike however the rows are split into calls."""
        from model import decoding
        key = self._global(np.asarray(jax.random.PRNGKey(0)), self.replicated)

        def one_call(batch, max_new_tokens):
            with self.partitioner.context():
                out = decoding.generate(self.model, params, batch, max_new_tokens,
                                        temperature=0.0, rng=key)
            return self._identity(out)  # gathered on every process

        def generate(prompts: Sequence[Any], max_new_tokens: int) -> list[list[int]]:
            n = len(prompts)
            per_call = self.rows_per_call(n)
            pads = [((), None)] * (-(-n // per_call) * per_call - n)  # start token only
            batch = prompt_batch(list(prompts) + pads)
            out = self._map_rows(lambda b: one_call(b, max_new_tokens), batch)
            return [list(map(int, row)) for row in out[:n]]

        return generate
