"""Chinchilla scaling-law fits on any table of (N parameters, D tokens, final loss).

Approach 2 (Hoffmann et al. 2022, section 3.2, "IsoFLOP profiles"): for each compute
budget C, fit a parabola of loss against log N; its vertex is N_opt(C). A power law
N_opt = k · C^a through the vertices gives the exponent a (D_opt = C / 6N_opt gives b).

Approach 3 (section 3.3, "parametric loss"): L(N, D) = E + A / N^α + B / D^β, fitted as
Hoffmann et al. and Besiroglu et al. (2024) do: with a = log A, b = log B, e = log E,
minimise the summed Huber loss (δ = 1e-3) of

    log L̂ = LSE(a - α log N, b - β log D, e)   against   log L

with L-BFGS from a grid of initialisations, keeping the best. The compute-optimal
exponents under C = 6ND are a = β / (α + β) for N and b = α / (α + β) for D.

Confidence intervals come from a bootstrap over the table's rows (Approach 3) or
over the runs within each budget (Approach 2). Shapes: every array is [P], one entry
per training run (point).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize
from scipy.special import logsumexp, softmax

from model.scaling.laws import ParametricLaw

# The initialisation grid of Hoffmann et al. (Appendix D.2), as Besiroglu et al. use it.
PAPER_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}


# ----------------------------------------------------------------- Approach 3
def _huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                     log_l: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the log-space residuals and its gradient.

    theta = (a, b, e, alpha, beta).
    """
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # [3, P]
    pred = logsumexp(terms, axis=0)
    r = pred - log_l
    absr = np.abs(r)
    loss = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum()
    dr = np.clip(r, -delta, delta)  # dHuber/dr
    w = softmax(terms, axis=0) * dr  # [3, P]: dLoss/dterm
    grad = np.array([w[0].sum(), w[1].sum(), w[2].sum(),
                     -(w[0] * log_n).sum(), -(w[1] * log_d).sum()])
    return float(loss), grad


@dataclasses.dataclass(frozen=True)
class Approach3Fit:
    law: ParametricLaw
    objective: float
    num_points: int
    # Bootstrap: standard error and (2.5%, 97.5%) interval per field of the law,
    # and of the compute-optimal exponent a = beta / (alpha + beta).
    stderr: dict[str, float] = dataclasses.field(default_factory=dict)
    interval: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"law": self.law.as_dict(), "objective": self.objective,
                "num_points": self.num_points, "stderr": self.stderr,
                "interval": {k: list(v) for k, v in self.interval.items()}}


def _minimise(x0: np.ndarray, args: tuple) -> optimize.OptimizeResult:
    return optimize.minimize(_huber_objective, x0, args=args, jac=True, method="L-BFGS-B",
                             options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12})


def _law(theta: np.ndarray) -> ParametricLaw:
    a, b, e, alpha, beta = (float(v) for v in theta)
    with np.errstate(over="ignore"):  # a degenerate fit (too few points) may overflow: inf
        return ParametricLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                             alpha=alpha, beta=beta)


def _batched_lbfgs(starts: np.ndarray, weights: np.ndarray, log_n: np.ndarray,
                   log_d: np.ndarray, log_l: np.ndarray, delta: float, steps: int = 100
                   ) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS from many starts at once (vmapped, float32).

    Args:
      starts: [S, 5] initial (a, b, e, alpha, beta).
      weights: [S, P] per-run weight of each point (ones; bootstrap counts).
    Returns:
      [S, 5] optima and [S] weighted objectives (inf where not finite).

    The paper's 4,500 starts one by one in scipy take minutes; batched they take
    seconds. The best few are then polished in float64 by scipy (`_minimise`).
    """
    ln, ld, ll = (jnp.asarray(v, jnp.float32) for v in (log_n, log_d, log_l))

    def run(x, w):
        def objective(theta):
            a, b, e, alpha, beta = theta
            terms = jnp.stack([a - alpha * ln, b - beta * ld, jnp.full_like(ln, e)])  # [3, P]
            pred = jax.nn.logsumexp(terms, axis=0)
            return (w * optax.losses.huber_loss(pred, ll, delta=delta)).sum()

        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(objective)

        def body(_, carry):
            x, state = carry
            value, grad = value_and_grad(x, state=state)
            updates, state = opt.update(grad, state, x, value=value, grad=grad,
                                        value_fn=objective)
            return optax.apply_updates(x, updates), state
        x, _ = jax.lax.fori_loop(0, steps, body, (x, opt.init(x)))
        return x, objective(x)

    xs, fs = jax.jit(jax.vmap(run))(jnp.asarray(starts, jnp.float32),
                                     jnp.asarray(weights, jnp.float32))
    fs = np.asarray(fs, np.float64)
    return np.asarray(xs, np.float64), np.where(np.isfinite(fs), fs, np.inf)


def _best_of(starts: Sequence[np.ndarray], args: tuple) -> tuple[np.ndarray, float]:
    best_x, best_f = None, np.inf
    for x0 in starts:
        res = _minimise(np.asarray(x0, float), args)
        if np.all(np.isfinite(res.x)) and res.fun < best_f:
            best_x, best_f = res.x, float(res.fun)
    if best_x is None:
        raise RuntimeError("Approach 3: no initialisation converged to a finite fit")
    return best_x, best_f


def fit_approach3(n: Sequence[float], d: Sequence[float], loss: Sequence[float], *,
                  delta: float = 1e-3, grid: dict[str, Sequence[float]] | None = None,
                  bootstrap: int = 0, seed: int = 0, polish: int = 10) -> Approach3Fit:
    """Fits L(N, D) = E + A/N^α + B/D^β (see module doc).

    Args:
      n, d, loss: [P] parameters, tokens and final loss of each run.
      delta: the Huber loss threshold on log-loss residuals.
      grid: initialisations, keys alpha, beta, e, a, b (default: the paper's 4,500).
      bootstrap: resamples of the rows for standard errors (0: none), each fitted from
        the full-data optimum.
      polish: how many of the best grid optima scipy refines in float64.
    """
    log_n, log_d, log_l = (np.log(np.asarray(v, float)) for v in (n, d, loss))
    if not (log_n.shape == log_d.shape == log_l.shape) or log_n.ndim != 1 or len(log_n) < 5:
        raise ValueError(f"fit_approach3 needs >= 5 points of equal length, got "
                         f"{len(log_n)}, {len(log_d)}, {len(log_l)}")
    grid = grid or PAPER_GRID
    starts = np.array([[a, b, e, al, be] for al, be, e, a, b in itertools.product(
        grid["alpha"], grid["beta"], grid["e"], grid["a"], grid["b"])])
    xs, fs = _batched_lbfgs(starts, np.ones((len(starts), len(log_n))), log_n, log_d, log_l,
                            delta)
    if not np.isfinite(fs).any():
        raise RuntimeError("Approach 3: no initialisation converged to a finite fit")
    warm = [xs[i] for i in np.argsort(fs)[:polish]]
    best_x, best_f = _best_of(warm, (log_n, log_d, log_l, delta))
    fit = Approach3Fit(_law(best_x), best_f, len(log_n))
    if bootstrap <= 0:
        return fit
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(log_n), len(log_n)), minlength=len(log_n))
                       for _ in range(bootstrap)])  # [R, P]: how often each row is drawn
    xs, _ = _batched_lbfgs(np.repeat(best_x[None], bootstrap, 0), counts, log_n, log_d, log_l,
                           delta)
    samples = []
    for x in xs:
        law = _law(x)
        samples.append({**law.as_dict(), "a": law.compute_exponents()[0]})
    keys = list(samples[0])
    values = {k: np.array([s[k] for s in samples]) for k in keys}
    values = {k: v[np.isfinite(v)] if np.isfinite(v).sum() > 1 else v for k, v in values.items()}
    return dataclasses.replace(
        fit, stderr={k: float(v.std(ddof=1)) for k, v in values.items()},
        interval={k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
                  for k, v in values.items()})


# ----------------------------------------------------------------- Approach 2
@dataclasses.dataclass(frozen=True)
class IsoFlopProfile:
    """One budget's parabola loss = c2·x² + c1·x + c0 with x = log10 N."""
    flops: float
    coeffs: tuple[float, float, float]
    n_opt: float
    num_points: int
    bracketed: bool = True  # a convex parabola with its vertex inside the sampled sizes


@dataclasses.dataclass(frozen=True)
class Approach2Fit:
    profiles: list[IsoFlopProfile]
    a: float  # N_opt = k · C^a
    k: float
    b: float  # D_opt = C / (6 N_opt) = (1 / 6k) · C^b, b = 1 - a
    a_interval: tuple[float, float] | None = None
    a_stderr: float | None = None

    def n_opt(self, flops: float) -> float:
        return self.k * flops ** self.a

    @property
    def unbracketed(self) -> list[float]:
        """Budgets whose N_opt is only a bound (their sizes miss the loss minimum)."""
        return [p.flops for p in self.profiles if not p.bracketed]

    def as_dict(self) -> dict:
        return {"a": self.a, "k": self.k, "b": self.b, "a_stderr": self.a_stderr,
                "a_interval": list(self.a_interval) if self.a_interval else None,
                "unbracketed_budgets": self.unbracketed,
                "profiles": [dataclasses.asdict(p) for p in self.profiles]}


def isoflop_profile(flops: float, n: np.ndarray, loss: np.ndarray) -> IsoFlopProfile:
    """The parabola through one budget's (log10 N, loss) points and its vertex."""
    if len(n) < 3:
        raise ValueError(f"budget {flops:.3g}: an IsoFLOP parabola needs >= 3 sizes, got {len(n)}")
    x = np.log10(n)
    c2, c1, c0 = np.polyfit(x, loss, 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
    bracketed = bool(c2 > 0 and x.min() < vertex < x.max())
    # Without an interior minimum the best sampled size stands in (a bound, not an optimum).
    x_opt = float(vertex) if bracketed else float(x[int(np.argmin(loss))])
    return IsoFlopProfile(float(flops), (float(c2), float(c1), float(c0)), float(10 ** x_opt),
                          len(n), bracketed)


def _power_law(flops: np.ndarray, n_opt: np.ndarray) -> tuple[float, float]:
    a, log_k = np.polyfit(np.log(flops), np.log(n_opt), 1)
    return float(a), float(np.exp(log_k))


def fit_approach2(flops: Sequence[float], n: Sequence[float], loss: Sequence[float], *,
                  bootstrap: int = 0, seed: int = 0) -> Approach2Fit:
    """IsoFLOP parabolas per distinct budget, then N_opt = k·C^a (see module doc).

    Args:
      flops, n, loss: [P] the budget, parameters and final loss of each run.
      bootstrap: resamples of the runs within each budget for a's interval (0: none).
    """
    flops, n, loss = (np.asarray(v, float) for v in (flops, n, loss))
    budgets = np.unique(flops)
    if len(budgets) < 2:
        raise ValueError(f"Approach 2 needs >= 2 budgets, got {len(budgets)}")
    groups = [np.flatnonzero(flops == c) for c in budgets]
    profiles = [isoflop_profile(c, n[g], loss[g]) for c, g in zip(budgets, groups)]
    a, k = _power_law(budgets, np.array([p.n_opt for p in profiles]))
    fit = Approach2Fit(profiles, a, k, 1.0 - a)
    if bootstrap <= 0:
        return fit
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        opts = []
        for c, g in zip(budgets, groups):
            pick = rng.choice(g, len(g))
            if len(np.unique(n[pick])) < 3:
                pick = g
            opts.append(isoflop_profile(c, n[pick], loss[pick]).n_opt)
        samples.append(_power_law(budgets, np.array(opts))[0])
    s = np.array(samples)
    return dataclasses.replace(fit, a_stderr=float(s.std(ddof=1)),
                               a_interval=(float(np.percentile(s, 2.5)),
                                           float(np.percentile(s, 97.5))))
