"""Elastic restore: a checkpoint written by N processes on one mesh restores into M
processes on another mesh with identical parameters and optimizer state.

One process with 8 devices covers the mesh changes ((8,1,1) -> (2,2,2), (1,4,2) with
FSDP, 1 device, and FSDP back to none); one launch of 2 processes x 4 devices
(`model.launch_local`) covers 1 -> 2 and 2 -> 1 processes. This file is also that
launch's worker: `python tests/test_elastic_restore.py WORK_DIR`.
"""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

if __name__ == "__main__":  # the worker runs as a script: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.checkpointing import CheckpointConfig, Checkpointer  # noqa: E402
from model.config import model_config  # noqa: E402
from model.evaluation import scoring, sharded  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from model.partitioning import Partitioner  # noqa: E402
from model.trainer import Trainer, TrainState, adamw, warmup_cosine_schedule  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small MoE, so weights carry 'expert', 'mlp', 'heads' and 'vocab' dims to shard.
CONFIG = dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=2, head_dim=16, d_ff=64,
              vocab_size=256, max_len=16, image=None, video=None, audio=None,
              **{"moe.expert_hidden": 32})
BATCH = scoring.build_batch([([0] + list(range(3, 18)), list(range(3, 19)), 16)] * 8, 16, 8)


def _model():
    return DecoderOnlyModel(model_config("tiny_moe", CONFIG))


def _trainer(mesh_shape, fsdp=False, num_devices=None):
    sched = warmup_cosine_schedule(1e-2, 1, 50)
    return Trainer(_model(), adamw(sched), Partitioner(mesh_shape, fsdp=fsdp,
                                                       num_devices=num_devices), sched)


def _flat(tree):
    """{'params/embed/embedding': leaf, ...} (dicts and namedtuples alike)."""
    def name(entry):
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)
    return {"/".join(name(e) for e in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _save(model_dir, state, step):
    ck = Checkpointer(model_dir, CheckpointConfig(async_save=False))
    ck.save(step, state, {"train_batches_consumed": step})
    ck.close()


def _restore(model_dir, tr):
    """(state dict, eval params) restored into `tr`'s mesh; every leaf in its sharding."""
    abstract, _ = tr.abstract_state(BATCH)
    ck = Checkpointer(model_dir, CheckpointConfig())
    state, _ = ck.restore_latest(abstract)
    ck.close()
    runner = sharded.MeshRunner(tr.model, tr.partitioner, 16)
    params, _ = runner.restore(str(model_dir), None)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract.as_dict())):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(runner.abstract_params)):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    return state, params


def _assert_local_shards_equal(tree, reference):
    """Every shard this process holds equals the same slice of the reference arrays."""
    ref = _flat(reference)
    n = 0
    for key, leaf in _flat(tree).items():
        for shard in leaf.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(ref[key])[shard.index],
                                          err_msg=key)
            n += 1
    return n


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A checkpoint of step 1 from mesh (8,1,1), 1 process: initialised params, and an
    optimizer state filled with random values (cheaper to compile than a train step)."""
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    model_dir = tmp_path_factory.mktemp("elastic") / "run"
    tr = _trainer((8, 1, 1))
    state = tr.init_state(jax.random.key(0), tr.partitioner.shard_batch(BATCH))

    def fill(state):
        leaves, tree = jax.tree.flatten(state.opt_state)
        leaves = [x + jax.random.normal(jax.random.key(i), x.shape, x.dtype)
                  if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x + 1
                  for i, x in enumerate(leaves)]
        return TrainState(state.step + 1, state.params, jax.tree.unflatten(tree, leaves))

    state = tr.partitioner.jit(fill, out_shardings=tr.state_shardings(BATCH))(state)
    _save(model_dir, state, 1)
    return model_dir, jax.device_get(state.as_dict())


@pytest.mark.parametrize("mesh_shape,fsdp,num_devices", [
    ((2, 2, 2), False, None), ((1, 4, 2), True, None), ((1, 1, 1), False, 1)])
def test_restore_onto_another_mesh_is_identical(written, mesh_shape, fsdp, num_devices):
    model_dir, reference = written
    state, params = _restore(model_dir, _trainer(mesh_shape, fsdp, num_devices))
    assert _assert_local_shards_equal(state, reference) >= len(jax.tree.leaves(reference))
    _assert_local_shards_equal(params, reference["params"])


def test_fsdp_checkpoint_restores_without_fsdp(written, tmp_path):
    model_dir, reference = written
    fsdp = _trainer((2, 2, 2), fsdp=True)
    state, _ = _restore(model_dir, fsdp)
    _save(tmp_path / "fsdp", TrainState.from_dict(state), 1)
    again, _ = _restore(tmp_path / "fsdp", _trainer((8, 1, 1)))
    _assert_local_shards_equal(again, reference)


@pytest.mark.slow
def test_one_to_two_processes_and_back(written, tmp_path):
    """1 process wrote it; 2 processes x 4 devices restore it on (2,2,2) with FSDP (each
    checking its shards), then write it again; 1 process restores that on (8,1,1)."""
    model_dir, reference = written
    np.savez(tmp_path / "reference.npz", **_flat(reference))
    os.symlink(model_dir, tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "model.launch_local", "--num_processes=2",
         "--devices_per_process=4", "--", sys.executable, os.path.abspath(__file__),
         str(tmp_path)], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[p0] restored" in out and "[p1] restored" in out, out[-2000:]
    state, params = _restore(tmp_path / "written_by_2", _trainer((8, 1, 1)))
    _assert_local_shards_equal(state, reference)
    _assert_local_shards_equal(params, reference["params"])


def _worker(work_dir: str) -> None:
    """One of 2 processes: restore `run` onto a global (2,2,2) FSDP mesh, check this
    host's shards against reference.npz, save it to `written_by_2`."""
    from model import partitioning
    partitioning.initialize_distributed()
    assert jax.process_count() == 2, jax.process_count()
    reference = dict(np.load(os.path.join(work_dir, "reference.npz")))
    tr = _trainer((2, 2, 2), fsdp=True)
    state, params = _restore(os.path.join(work_dir, "run"), tr)
    n = _assert_local_shards_equal(state, reference)
    _assert_local_shards_equal(params, {k[len("params/"):]: v for k, v in reference.items()
                                        if k.startswith("params/")})
    _save(os.path.join(work_dir, "written_by_2"), TrainState.from_dict(state), 1)
    print(f"restored {n} shards on process {jax.process_index()}", flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1])
