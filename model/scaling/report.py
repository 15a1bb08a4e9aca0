"""The sweep report: fits of a (N, D, loss) table, IsoFLOP and N_opt-vs-C plots,
markdown + self-contained HTML (`model.evaluation.report`)."""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from model import fs
from model.evaluation import report as report_lib
from model.evaluation.plots import _figure, _png
from model.scaling import fit as fit_lib


def isoflop_plot(rows: Sequence[dict[str, Any]], a2: fit_lib.Approach2Fit) -> bytes:
    """Loss vs N per budget, each with its parabola and vertex."""
    plt, fig, ax = _figure()
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(a2.profiles)))
    for prof, colour in zip(a2.profiles, colours):
        pts = [r for r in rows if r["budget"] == prof.flops]
        x = np.array([r["n"] for r in pts], float)
        ax.scatter(x, [r["loss"] for r in pts], color=colour, label=f"C = {prof.flops:.2g}")
        grid = np.linspace(np.log10(x.min()) - 0.1, np.log10(x.max()) + 0.1, 100)
        ax.plot(10 ** grid, np.polyval(prof.coeffs, grid), color=colour, lw=1)
        ax.axvline(prof.n_opt, color=colour, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final smoothed training loss")
    ax.set_title("IsoFLOP profiles (Approach 2)")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def nopt_plot(a2: fit_lib.Approach2Fit) -> bytes:
    """N_opt per budget and the fitted power law N_opt = k·C^a."""
    plt, fig, ax = _figure()
    c = np.array([p.flops for p in a2.profiles])
    ax.scatter(c, [p.n_opt for p in a2.profiles], color="#4c72b0", label="parabola vertices")
    grid = np.geomspace(c.min() / 2, c.max() * 2, 50)
    ci = (f" [{a2.a_interval[0]:.2f}, {a2.a_interval[1]:.2f}]" if a2.a_interval else "")
    ax.plot(grid, a2.n_opt(grid), color="#c44e52", label=f"N_opt ∝ C^{a2.a:.3f}{ci}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("N_opt")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def caveats(rows: Sequence[dict[str, Any]], a2: fit_lib.Approach2Fit) -> list[str]:
    """What makes this sweep's exponent a bound rather than a measurement, in words."""
    notes = []
    if a2.unbracketed:
        budgets = ", ".join(f"{c:.3g}" for c in a2.unbracketed)
        notes.append(
            f"The sizes of budget(s) {budgets} do not bracket the loss minimum (the parabola "
            "opens downward or its vertex lies outside the sampled sizes), so their N_opt is "
            "the best sampled size, a bound: a is not determined by this sweep. Extend the "
            "sizes (--spread) or the budgets until each profile has an interior minimum.")
    for c in sorted({r["budget"] for r in rows}):
        ratios = [r["flops_exact"] / c for r in rows if r["budget"] == c and "flops_exact" in r]
        if ratios and max(ratios) / min(ratios) > 2.0:
            notes.append(
                f"At budget {c:.3g} the real training FLOPs (model/flops.py) range from "
                f"{min(ratios):.2g}x to {max(ratios):.2g}x the budget: 6ND misses the "
                "embedding, logits and attention FLOPs that dominate at these sizes, so the "
                "sizes did not get equal compute. Use --flops=exact (equal real compute per "
                "budget) or --count=total (Chinchilla counts every parameter).")
            break
    return notes


def fit_and_report(rows: Sequence[dict[str, Any]], out_dir: str, meta: dict[str, Any], *,
                   bootstrap: int = 200) -> dict[str, Any]:
    """Approach 2 and 3 fits of the sweep's rows; writes fits.json and report.{md,html}."""
    flops = [r["budget"] for r in rows]
    n = [r["n"] for r in rows]
    d = [r["tokens"] for r in rows]
    loss = [r["loss"] for r in rows]
    a2 = fit_lib.fit_approach2(flops, n, loss, bootstrap=bootstrap)
    a3 = fit_lib.fit_approach3(n, d, loss, bootstrap=bootstrap)
    notes = caveats(rows, a2)
    fits = {"approach2": a2.as_dict(), "approach3": a3.as_dict(), "caveats": notes,
            "points": list(rows)}
    fs.write_text(fs.join(out_dir, "fits.json"),
                  json.dumps(report_lib.finite_or_none(fits), indent=1, allow_nan=False))
    a3_exp = a3.law.compute_exponents()[0]
    a3_ci = a3.interval.get("a")
    sections = [
        report_lib.Section("Runs", tables=[report_lib.Table(
            ("point", "budget", "N", "tokens", "steps", "real FLOPs / budget", "loss",
             "seconds"),
            [(r["name"], f"{r['budget']:.3g}", f"{r['n']:,}", f"{r['tokens']:,}", r["steps"],
              f"{r['flops_exact'] / r['budget']:.2f}" if "flops_exact" in r else "",
              f"{r['loss']:.4f}", f"{r['seconds']:.0f}") for r in rows])]),
        report_lib.Section("Approach 2: IsoFLOP profiles", paragraphs=[
            f"N_opt = {a2.k:.3g} · C^a with a = {a2.a:.3f}"
            + (f" (95% bootstrap interval {a2.a_interval[0]:.3f} to {a2.a_interval[1]:.3f})"
               if a2.a_interval else "") + f"; D_opt ∝ C^{a2.b:.3f}.", *notes],
            figures=[report_lib.Figure("isoflop", "Loss vs N per budget, with parabolas",
                                       isoflop_plot(rows, a2)),
                     report_lib.Figure("nopt", "N_opt vs C", nopt_plot(a2))]),
        report_lib.Section("Approach 3: parametric fit", paragraphs=[
            "L(N, D) = E + A/N^α + B/D^β, summed Huber loss (δ = 1e-3) of log loss, "
            f"L-BFGS from the paper's grid: a = β/(α+β) = {a3_exp:.3f}"
            + (f" (95% interval {a3_ci[0]:.3f} to {a3_ci[1]:.3f})" if a3_ci else "") + "."],
            tables=[report_lib.Table(("parameter", "estimate", "bootstrap s.e."),
                                     [(k, f"{v:.4g}", f"{a3.stderr.get(k, float('nan')):.3g}")
                                      for k, v in a3.law.as_dict().items()])]),
    ]
    report_lib.write_report(out_dir, "Scaling sweep", meta, sections)
    return fits
