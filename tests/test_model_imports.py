"""model/ imports and runs with only JAX-side packages (TF, Beam, SeqIO blocked)."""
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import importlib.abc, sys
BLOCKED = ("tensorflow", "apache_beam", "seqio", "pipelines", "tasks", "torch")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {name}")
sys.meta_path.insert(0, Block())
import jax, numpy as np
from model import config, decoding, flops, models, moe, encoders, blockwise_attention
cfg = config.model_config("tiny_moe", {"vocab_size": 64, "num_layers": 2, "image": None,
                                       "video": None, "audio": None})
m = models.DecoderOnlyModel(cfg)
toks = np.ones((1, 8), np.int32)
batch = {"decoder_input_tokens": toks, "decoder_target_tokens": toks,
         "decoder_loss_weights": np.ones((1, 8), np.float32)}
params = m.init(jax.random.PRNGKey(0), batch)
loss, metrics = m.loss_fn(params, batch, None)
out = decoding.generate(m, params, {"decoder_input_tokens": toks}, 2)
assert np.isfinite(float(loss)) and out.shape == (1, 2)
print("OK", sorted(k for k in sys.modules if k.split(".")[0] in BLOCKED))
"""


def test_model_runs_without_data_side_packages():
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK []"), res.stdout
