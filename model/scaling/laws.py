"""Compute-optimal model size and token count (Hoffmann et al. 2022, "Chinchilla").

Under C = 6·N·D (training FLOPs ≈ 6 × parameters × tokens):

- Approaches 1 and 2 of the paper give N_opt ∝ C^0.50 and D_opt ∝ C^0.50 (≈ 20 tokens
  per parameter). The paper publishes the Approach 1 law only through its Table 3
  (`TABLE3`) and rounded exponents; `APPROACH1` is the power law through that table
  (N_opt = k·C^0.498, D_opt = k'·C^0.502: within 1.2% of every row's N and 1% of its D,
  except the 67B row, whose own columns disagree by 4.6% with C = 6ND).
  `TokensPerParameter` is the plain rule of thumb D = 20·N, N = sqrt(C / 120).
- Approach 3 fits L(N, D) = E + A/N^α + B/D^β. Minimising it on C = 6ND gives
  N_opt = G·(C/6)^a, D_opt = G⁻¹·(C/6)^b, G = (αA / βB)^(1/(α+β)), a = β/(α+β), b = α/(α+β)
  (`ParametricLaw.optimal`). Published fits: Hoffmann et al. (E 1.69, A 406.4, B 410.7,
  α 0.34, β 0.28) and Besiroglu et al. 2024's refit of the paper's Figure 4 data
  (E 1.8172, A 482.01, B 2085.43, α 0.3478, β 0.3658).

`optimal_for_flops_per_token` repeats Approach 3 with the exact FLOPs of a concrete
architecture (`model.flops`: attention and the output layer included, MoE counted by
its active parameters) in place of 6N.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta (N parameters, D training tokens)."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    def compute_exponents(self) -> tuple[float, float]:
        """(a, b): N_opt ∝ C^a, D_opt ∝ C^b."""
        s = self.alpha + self.beta
        return self.beta / s, self.alpha / s

    def optimal(self, flops: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising the loss subject to 6·N·D = flops (closed form)."""
        a, b = self.compute_exponents()
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return g * (flops / 6.0) ** a, (flops / 6.0) ** b / g

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


HOFFMANN = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BESIROGLU = ParametricLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
LAWS = {"hoffmann": HOFFMANN, "besiroglu": BESIROGLU}


@dataclasses.dataclass(frozen=True)
class TokensPerParameter:
    """Approaches 1/2 as a rule: D_opt = ratio · N_opt (the paper's Table 3: ≈ 20)."""
    ratio: float = 20.0

    def optimal(self, flops: float) -> tuple[float, float]:
        n = math.sqrt(flops / (6.0 * self.ratio))
        return n, self.ratio * n

    def for_params(self, n: float) -> tuple[float, float]:
        """(FLOPs, tokens) of training an n-parameter model compute-optimally."""
        d = self.ratio * n
        return 6.0 * n * d, d

    def for_tokens(self, d: float) -> tuple[float, float]:
        """(FLOPs, parameters) of the compute-optimal model for d tokens."""
        n = d / self.ratio
        return 6.0 * n * d, n


# Hoffmann et al. 2022, Table 3 (Approach 1): (parameters, FLOPs, tokens).
TABLE3 = ((400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9),
          (67e9, 5.76e23, 1.5e12), (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12),
          (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12), (10e12, 1.30e28, 216.2e12))


@dataclasses.dataclass(frozen=True)
class PowerLawPlan:
    """N_opt = k_n · C^a and D_opt = k_d · C^b (Approaches 1 and 2 of the paper)."""
    a: float
    k_n: float
    b: float
    k_d: float

    @classmethod
    def through(cls, rows: Sequence[tuple[float, float, float]]) -> "PowerLawPlan":
        """Least squares in log space through (N, C, D) rows."""
        log_n, log_c, log_d = (np.log([r[i] for r in rows]) for i in range(3))
        a, log_kn = np.polyfit(log_c, log_n, 1)
        b, log_kd = np.polyfit(log_c, log_d, 1)
        return cls(float(a), float(np.exp(log_kn)), float(b), float(np.exp(log_kd)))

    def optimal(self, flops: float) -> tuple[float, float]:
        return self.k_n * flops ** self.a, self.k_d * flops ** self.b

    def for_params(self, n: float) -> tuple[float, float]:
        """(FLOPs, tokens) at which n parameters are compute-optimal."""
        flops = (n / self.k_n) ** (1.0 / self.a)
        return flops, self.optimal(flops)[1]

    def for_tokens(self, d: float) -> tuple[float, float]:
        """(FLOPs, parameters) at which d tokens are compute-optimal."""
        flops = (d / self.k_d) ** (1.0 / self.b)
        return flops, self.optimal(flops)[0]


APPROACH1 = PowerLawPlan.through(TABLE3)


def optimal_for_flops_per_token(law: ParametricLaw, flops: float,
                                candidates: Sequence[tuple[float, Callable[[], float]]]
                                ) -> tuple[int, float, float]:
    """Approach 3 with exact FLOP counts over a discrete set of architectures.

    Args:
      law: the fitted L(N, D).
      flops: the training budget.
      candidates: (N parameters, flops_per_token thunk) per architecture.
    Returns:
      (index of the best candidate, its tokens D = flops / flops_per_token, its loss).
    """
    best = (-1, 0.0, math.inf)
    for i, (n, fpt) in enumerate(candidates):
        d = flops / fpt()
        loss = law.loss(n, d)
        if loss < best[2]:
            best = (i, d, loss)
    if best[0] < 0:
        raise ValueError("optimal_for_flops_per_token: no candidate architectures")
    return best
