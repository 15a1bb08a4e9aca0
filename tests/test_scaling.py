"""Chinchilla planning and fits: the paper's Table 3, the closed form, fits that recover
known laws, Besiroglu et al.'s published fit on the real Figure 4 data, shapes, and the
exact FLOP count against XLA's cost analysis."""
import csv
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from model import flops as flops_lib
from model import plan
from model.config import model_config
from model.models import DecoderOnlyModel
from model.scaling import fit, laws, report, shapes, sweep

TABLE3 = laws.TABLE3

# Besiroglu et al. 2024 (arXiv 2404.10102): estimates and bootstrap standard errors.
PUBLISHED = {"E": (1.8172, 0.03), "A": (482.01, 124.58), "B": (2085.43, 1293.23),
             "alpha": (0.3478, 0.02), "beta": (0.3658, 0.02)}


@pytest.mark.parametrize("n, c, d", TABLE3)
def test_planner_reproduces_table3(n, c, d):
    for rule in (laws.APPROACH1, laws.TokensPerParameter()):
        n_opt, d_opt = rule.optimal(c)
        assert n_opt == pytest.approx(n, rel=0.05)
        if abs(6 * n * d / c - 1) > 0.02:
            # The 67B row (Gopher's budget) disagrees with itself: 6 * 67e9 * 1.5e12 =
            # 6.03e23, not 5.76e23. From its budget we plan 67B and the tokens C / 6N.
            assert d_opt == pytest.approx(c / (6 * n), rel=0.05)
            continue
        assert d_opt == pytest.approx(d, rel=0.05)
    flops, tokens = laws.APPROACH1.for_params(n)
    assert flops == pytest.approx(c, rel=0.05)
    if abs(6 * n * d / c - 1) <= 0.02:
        assert tokens == pytest.approx(d, rel=0.05)
        assert laws.APPROACH1.for_tokens(d)[1] == pytest.approx(n, rel=0.05)


@pytest.mark.parametrize("law", [laws.HOFFMANN, laws.BESIROGLU])
def test_closed_form_minimises_the_law_on_the_budget(law):
    c = 1e22
    res = optimize.minimize_scalar(lambda log_n: law.loss(math.exp(log_n), c / 6 / math.exp(log_n)),
                                   bounds=(10, 35), method="bounded", options={"xatol": 1e-9})
    n_opt, d_opt = law.optimal(c)
    assert n_opt == pytest.approx(math.exp(res.x), rel=1e-4)
    assert 6 * n_opt * d_opt == pytest.approx(c, rel=1e-12)


def _synthetic_runs(law, budgets, rng, noise=0.0):
    n, d, c = [], [], []
    for budget in budgets:
        for x in np.geomspace(0.2, 5.0, 7) * law.optimal(budget)[0]:
            n.append(x), d.append(budget / (6 * x)), c.append(budget)
    n, d, c = map(np.array, (n, d, c))
    loss = np.array([law.loss(a, b) for a, b in zip(n, d)]) * np.exp(noise * rng.standard_normal(len(n)))
    return n, d, c, loss


def test_approach3_recovers_a_known_law():
    n, d, _, loss = _synthetic_runs(laws.HOFFMANN, [1e18, 1e19, 1e20, 1e21], np.random.default_rng(0))
    got = fit.fit_approach3(n, d, loss, grid={k: v[::2] for k, v in fit.PAPER_GRID.items()}).law
    for field in ("E", "A", "B", "alpha", "beta"):
        assert getattr(got, field) == pytest.approx(getattr(laws.HOFFMANN, field), rel=1e-3), field


def test_approach2_finds_the_law_exponent():
    n, d, c, loss = _synthetic_runs(laws.BESIROGLU, [1e18, 1e19, 1e20, 1e21], np.random.default_rng(0),
                                    noise=1e-3)
    got = fit.fit_approach2(c, n, loss, bootstrap=50)
    a = laws.BESIROGLU.compute_exponents()[0]
    assert got.a == pytest.approx(a, abs=0.02)
    lo, hi = got.a_interval
    assert lo < got.a < hi and hi - lo < 0.1
    assert got.unbracketed == [] and report.caveats([], got) == []
    with pytest.raises(ValueError, match=">= 3 sizes"):
        fit.isoflop_profile(1e18, n[:2], loss[:2])


def test_sizes_that_miss_the_minimum_are_reported_as_a_bound():
    """Losses that fall with N at every budget (the smallest sweep sizes of a CPU demo
    often do): no interior vertex, so the exponent is a bound and the report says so."""
    n, d, c, loss = _synthetic_runs(laws.HOFFMANN, [1e18, 1e19], np.random.default_rng(0))
    small = n < np.array([laws.HOFFMANN.optimal(b)[0] for b in c])  # left arm only
    got = fit.fit_approach2(c[small], n[small], loss[small])
    assert got.unbracketed == [1e18, 1e19]
    assert [p.n_opt for p in got.profiles] == pytest.approx(
        [n[small][c[small] == b].max() for b in (1e18, 1e19)])
    rows = [{"budget": b, "flops_exact": f} for b, f in ((1e18, 1e18), (1e18, 9e18), (1e19, 1e19))]
    notes = report.caveats(rows, got)
    assert "a is not determined" in notes[0] and "--flops=exact" in notes[1]


def test_exact_flop_rule_gives_every_size_of_a_budget_the_same_real_compute():
    base = dataclasses.replace(model_config("tiny"), image=None, video=None, audio=None)
    kw = dict(seq_len=128, batch_size=8, spread=3.0)
    spread = {}
    for rule in ("6nd", "exact"):
        points = sweep.plan_points([5e12], 5, base, flops=rule, **kw)
        real = [flops_lib.flops_per_token(p.cfg, p.seq_len) * p.tokens for p in points]
        spread[rule] = max(real) / min(real)
    assert spread["6nd"] > 2.0 and spread["exact"] < 1.1, spread
    with pytest.raises(ValueError, match="choose one of"):
        sweep.plan_points([5e12], 5, base, flops="7nd", **kw)


@pytest.mark.real_data
def test_approach3_reproduces_besiroglu_on_chinchilla_figure4(data_dir):
    path = data_dir / "scaling" / "chinchilla_fig4_svg_extracted.csv"
    rows = list(csv.DictReader(path.open()))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(loss)[:-5]  # as they do: drop the 5 highest-loss points
    n, c, loss = n[keep], c[keep], loss[keep]
    got = fit.fit_approach3(n, c / (6 * n), loss, bootstrap=40,
                            grid={k: v[::2] for k, v in fit.PAPER_GRID.items()})
    law = got.law
    assert law.E == pytest.approx(PUBLISHED["E"][0], rel=0.005)
    assert law.alpha == pytest.approx(PUBLISHED["alpha"][0], rel=0.02)
    assert law.beta == pytest.approx(PUBLISHED["beta"][0], rel=0.02)
    assert law.A == pytest.approx(PUBLISHED["A"][0], rel=0.05)
    assert law.B == pytest.approx(PUBLISHED["B"][0], rel=0.05)
    assert law.compute_exponents()[0] == pytest.approx(0.513, abs=0.01)
    for field, (_, se) in PUBLISHED.items():  # bootstrap errors of the same order
        assert se / 4 < got.stderr[field] < se * 4, (field, got.stderr[field], se)


def test_shapes_follow_the_preset_rules_and_land_near_the_target():
    base = dataclasses.replace(model_config("tiny"), image=None, video=None, audio=None)
    for target in (2e5, 3e6, 5e7):
        cfg = shapes.closest_shape(base, target)
        assert cfg.num_heads * cfg.head_dim == cfg.d_model and cfg.num_heads % cfg.num_kv_heads == 0
        assert cfg.d_ff == 4 * cfg.d_model
        assert abs(math.log(shapes.count_params(cfg) / target)) < math.log(1.3)
    total = shapes.count_params(base, "total")
    assert total == flops_lib.param_counts(base)[1]
    assert total - shapes.count_params(base) == 2 * base.vocab_size * base.d_model


def test_plan_cli_writes_a_gin_file_the_config_accepts(tmp_path, capsys):
    out = tmp_path / "plan.gin"
    assert plan.main(["--flops=1e21", "--seq_len=1024", f"--gin_out={out}", "--dense"]) == 0
    text = out.read_text()
    printed = capsys.readouterr().out
    assert "Approach 3, besiroglu (exact FLOPs)" in printed and "TRAIN_STEPS = " in text
    import gin
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [str(out)], [], skip_unknown=["DecoderOnlyModel", "train", "warmup_cosine_schedule"])
        cfg = model_config()
    finally:
        gin.clear_config()
    assert cfg.d_model > 128 and cfg.image is None
    with pytest.raises(SystemExit):
        plan.main(["--flops=1e21", "--params=1e9"])


@pytest.mark.parametrize("name", ["maxtext_dense", "maxtext_moe"])
def test_exact_flops_match_xla_cost_analysis(name):
    # Model FLOPs count the tokens routed to experts, not capacity padding: capacity 1.0.
    cfg = model_config(name, {"attention_backend": "xla", "num_layers": 2}
                       | ({"moe.capacity_factor_train": 1.0} if "moe" in name else {}))
    model = DecoderOnlyModel(cfg)
    b, t = 2, 256
    batch = {"decoder_input_tokens": jnp.zeros((b, t), jnp.int32),
             "decoder_target_tokens": jnp.ones((b, t), jnp.int32),
             "decoder_loss_weights": jnp.ones((b, t), jnp.float32),
             "decoder_segment_ids": jnp.ones((b, t), jnp.int32),
             "decoder_positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))}
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch))
    grad = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch)[0]))
    analysis = grad.lower(params).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    counted = flops_lib.flops_per_token(cfg, t) * b * t
    assert analysis["flops"] == pytest.approx(counted, rel=0.10)


@pytest.mark.slow
def test_sweep_trains_fits_reports_and_resumes(tmp_path):
    """2 budgets x 3 sizes on synthetic data, then a rerun that only redoes one point."""
    import json
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "model.sweep", "--gin_file=gin/runs/pretrain_synthetic.gin",
           "--budgets=2e9,4e9", "--sizes=3", "--seq_len=32", "--batch_size=4", "--parallel=2",
           "--bootstrap=10", f"--out={out}",
           "--gin_binding=train.peak_flops_per_device = 1e12"]  # no start-up matmul probe
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    fits = json.loads((out / "fits.json").read_text())
    assert len(fits["points"]) == 6 and len(fits["approach2"]["profiles"]) == 2
    assert (out / "report.html").read_text().count("data:image/png;base64") == 2
    finals = sorted(out.glob("points/*/FINAL.json"))
    assert len(finals) == 6
    redo = finals[0]
    before = json.loads(redo.read_text())
    redo.unlink()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("finished earlier, skipped") == 5
    assert json.loads(redo.read_text())["loss"] == pytest.approx(before["loss"])
