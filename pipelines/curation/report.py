"""The curation report: what each rule removed and how each quality signal is distributed.

    write_report(output_dir, summary, histograms)  -> report.md, report.html beside the outputs

`summary` is curate.py's summary.json (documents in / kept / dropped by rule);
`histograms` is `HistogramFn`'s output: for every signal, counts over the fixed bins
of `SIGNAL_BINS` (values outside are clipped into the end bins), combined across
workers without holding any per-document value. A stage's signals are those of
the documents that reached it (the first failing rule drops a document). The markdown holds the rule table
and the histograms as text; the HTML holds the same table, a bar chart of documents
removed per rule and one histogram per signal (inline SVG, no script, no network).
"""

from __future__ import annotations

import html
import math

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

# signal -> (low, high, bins); fractions in [0, 1] unless said otherwise
SIGNAL_BINS = {
    "language_probability": (0.0, 1.0, 20),
    "words": (0.0, 5.0, 25),  # log10 of the word count
    "mean_word_length": (0.0, 15.0, 30),
    "hash_ratio": (0.0, 0.5, 25),
    "ellipsis_ratio": (0.0, 0.5, 25),
    "bullet_lines": (0.0, 1.0, 20),
    "ellipsis_lines": (0.0, 1.0, 20),
    "alpha_words": (0.0, 1.0, 20),
    "stop_words": (0.0, 9.0, 9),
    "dup_para_frac": (0.0, 1.0, 20), "dup_para_char_frac": (0.0, 1.0, 20),
    "dup_line_frac": (0.0, 1.0, 20), "dup_line_char_frac": (0.0, 1.0, 20),
    **{f"top_{n}_gram": (0.0, 1.0, 20) for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": (0.0, 1.0, 20) for n in range(5, 11)},
}
THRESHOLDS = {"words": math.log10(50), "mean_word_length": 3, "hash_ratio": 0.1, "ellipsis_ratio": 0.1,
              "bullet_lines": 0.9, "ellipsis_lines": 0.3, "alpha_words": 0.8, "stop_words": 2,
              "dup_para_frac": 0.3, "dup_para_char_frac": 0.2, "dup_line_frac": 0.3, "dup_line_char_frac": 0.2,
              "top_2_gram": 0.2, "top_3_gram": 0.18, "top_4_gram": 0.16,
              **{f"duplicated_{n}_n_grams": 0.15 - 0.01 * (n - 5) for n in range(5, 11)}}


def bin_index(signal: str, value: float) -> int | None:
    if signal not in SIGNAL_BINS:
        return None
    lo, hi, n = SIGNAL_BINS[signal]
    if signal == "words":
        value = math.log10(max(value, 1))
    return min(max(int((value - lo) / (hi - lo) * n), 0), n - 1)


class HistogramFn(beam.CombineFn):
    """signal dicts -> {signal: [count per bin]} (SIGNAL_BINS)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, signals):
        for name, value in signals.items():
            i = bin_index(name, value)
            if i is not None:
                acc.setdefault(name, [0] * SIGNAL_BINS[name][2])[i] += 1
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for name, counts in acc.items():
                merged = out.setdefault(name, [0] * len(counts))
                for i, c in enumerate(counts):
                    merged[i] += c
        return out

    def extract_output(self, acc):
        return acc


def _rule_rows(summary: dict) -> list[tuple[str, str, int, float]]:
    n_in = max(summary["documents_in"], 1)
    rows = [(stage, reason, n, n / n_in) for stage, reasons in sorted(summary["dropped_by_stage"].items())
            for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    return rows


def markdown(summary: dict, histograms: dict) -> str:
    lines = ["# Curation report", "",
             f"{summary['documents_in']} documents in, {summary['kept']} kept, {summary['dropped']} dropped"
             f" ({'balanced' if summary['balanced'] else 'NOT BALANCED'}).", "",
             "| stage | rule | documents removed | share of input |", "|---|---|---:|---:|"]
    lines += [f"| {stage} | {reason} | {n} | {share:.2%} |" for stage, reason, n, share in _rule_rows(summary)]
    lines += ["", "## Signals (documents per bin)", ""]
    for name, counts in sorted(histograms.items()):
        lo, hi, n = SIGNAL_BINS[name]
        scale = " (log10)" if name == "words" else ""
        lines.append(f"- `{name}`{scale} [{lo}, {hi}] in {n} bins: {' '.join(map(str, counts))}")
    return "\n".join(lines) + "\n"


def _bar_chart(rows) -> str:
    if not rows:
        return "<p>No document was removed.</p>"
    width, bar_h, label_w = 640, 18, 260
    top = max(n for *_, n, _ in rows)
    parts = [f'<svg width="{width}" height="{bar_h * len(rows) + 10}" role="img" '
             'aria-label="documents removed per rule">']
    for i, (stage, reason, n, _) in enumerate(rows):
        w = (width - label_w - 60) * n / top
        y = i * bar_h + 5
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" font-size="12">'
                     f'{html.escape(stage)}: {html.escape(reason)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 4}" fill="#c0504d"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 13}" font-size="12">{n}</text>')
    return "".join(parts) + "</svg>"


def _histogram(name: str, counts: list[int]) -> str:
    lo, hi, n = SIGNAL_BINS[name]
    width, height = 300, 100
    top = max(max(counts), 1)
    bw = width / n
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{height - height * c / top:.1f}" width="{bw - 1:.1f}" '
                   f'height="{height * c / top:.1f}" fill="#4f81bd"><title>{c}</title></rect>'
                   for i, c in enumerate(counts))
    mark = ""
    if name in THRESHOLDS:
        x = (THRESHOLDS[name] - lo) / (hi - lo) * width
        mark = f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#c0504d" stroke-dasharray="3"/>'
    scale = " (log10)" if name == "words" else ""
    return (f'<figure><figcaption><code>{html.escape(name)}</code>{scale}: {lo} to {hi}, '
            f'dashed: threshold</figcaption><svg width="{width}" height="{height}">{bars}{mark}</svg></figure>')


def html_report(summary: dict, histograms: dict) -> str:
    rows = _rule_rows(summary)
    table = "".join(f"<tr><td>{html.escape(s)}</td><td>{html.escape(r)}</td><td>{n}</td><td>{p:.2%}</td></tr>"
                    for s, r, n, p in rows)
    figures = "".join(_histogram(name, counts) for name, counts in sorted(histograms.items()))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Curation report</title>"
            f"<style>body{{font-family:sans-serif;max-width:980px}}td,th{{padding:2px 8px}}"
            f"figure{{display:inline-block;margin:6px}}</style></head><body>"
            f"<h1>Curation report</h1><p>{summary['documents_in']} documents in, {summary['kept']} kept, "
            f"{summary['dropped']} dropped.</p><table><tr><th>stage</th><th>rule</th><th>removed</th>"
            f"<th>share</th></tr>{table}</table><h2>Removed per rule</h2>{_bar_chart(rows)}"
            f"<h2>Signals</h2>{figures}</body></html>")


def write_report(output_dir: str, summary: dict, histograms: dict) -> tuple[str, str]:
    paths = FileSystems.join(output_dir, "report.md"), FileSystems.join(output_dir, "report.html")
    for path, text in zip(paths, (markdown(summary, histograms), html_report(summary, histograms))):
        with FileSystems.create(path) as f:
            f.write(text.encode("utf-8"))
    return paths
