"""IsoFLOP sweep: `python -m model.sweep --gin_file=... --budgets=... --sizes=5 --out=DIR`.

One training run per (budget, size) point (`model.scaling.sweep`): shapes by our
presets' rules around the 20-tokens-per-parameter optimum, tokens = budget / 6N, a
cosine schedule over exactly the run. Rerunning the same command resumes: finished
points are skipped, an interrupted one continues from its checkpoint. Then the
Approach 2 and 3 fits with bootstrap intervals, the IsoFLOP and N_opt-vs-C plots, and
`DIR/report.{md,html}` + `DIR/fits.json`.

    python -m model.sweep --gin_file=gin/runs/pretrain.gin \
        --gin_binding="MIXTURE_OR_TASK_NAME='tapestry_text'" --gin_binding="CACHE_DIR='/tmp/cache'" \
        --budgets=2e11,5e11,1.2e12 --sizes=5 --seq_len=128 --batch_size=8 --out=/tmp/sweep
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Sequence

from model import fs
from model.config import PRESETS
from model.scaling import report, shapes
from model.scaling import sweep as sweep_lib


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gin_file", action="append", required=True,
                   help="run gin files (e.g. gin/runs/pretrain.gin); the model is set per point")
    p.add_argument("--gin_binding", action="append", default=[], help="extra gin bindings")
    p.add_argument("--budgets", required=True, help="comma-separated FLOP budgets (C = 6ND)")
    p.add_argument("--sizes", type=int, default=5, help="model sizes per budget")
    p.add_argument("--spread", type=float, default=4.0,
                   help="sizes span [N*/spread, N*·spread] around N* = sqrt(C/120)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="vocabulary and attention settings (media dropped)")
    p.add_argument("--count", choices=shapes.COUNTS, default="non_embedding",
                   help="the N of the fits")
    p.add_argument("--flops", choices=sweep_lib.FLOP_RULES, default="6nd",
                   help="tokens per point: budget / 6N, or budget / exact training FLOPs "
                        "per token (model/flops.py), which equalises real compute")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--parallel", type=int, default=1, help="points trained at once")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--out", required=True, help="sweep directory (local or gs://)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b]
    except ValueError:
        p.error(f"--budgets={args.budgets!r}: comma-separated numbers, e.g. 1e11,3e11,1e12")
    base = dataclasses.replace(PRESETS[args.preset], image=None, video=None, audio=None)
    try:
        points = sweep_lib.plan_points(budgets, args.sizes, base, seq_len=args.seq_len,
                                       batch_size=args.batch_size, spread=args.spread,
                                       count=args.count, flops=args.flops)
    except ValueError as e:
        p.error(str(e))
    fs.makedirs(args.out)
    rows = sweep_lib.run_points(points, args.out, args.gin_file, args.preset,
                                parallel=args.parallel, extra_bindings=args.gin_binding)
    fits = report.fit_and_report(rows, args.out, {"budgets": args.budgets, "sizes": args.sizes,
                                                  "preset": args.preset, "count": args.count,
                                                  "flops": args.flops},
                                 bootstrap=args.bootstrap)
    a2, a3 = fits["approach2"], fits["approach3"]
    print(f"Approach 2: a = {a2['a']:.3f} {a2['a_interval']}; Approach 3: "
          f"{a3['law']} a-interval {a3['interval'].get('a')}")
    for note in fits.get("caveats", []):
        print(f"caveat: {note}")
    print(f"report: {fs.join(args.out, 'report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
