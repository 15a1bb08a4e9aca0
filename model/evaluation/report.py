"""The evaluation report directory.

    <out>/results.json          per task: metrics, stderr, n, n-shot, config, timing;
                                plus run metadata (versions, git commit, checkpoint step, date)
                                and the same results in lm-eval's schema (lm_eval_schema.py)
    <out>/samples_<task>.jsonl  one line per sample: inputs as sent, target, outputs or
                                scores, per-sample metric, lm-eval's doc/prompt/target
                                hashes (lm_eval_schema.sample_hashes)
    <out>/report.md             tables, with plots under <out>/plots/*.png
    <out>/report.html           the same, self-contained (plots inlined as base64 PNGs)

A report is a list of `Section`s; each eval suite contributes its own, and callers
may append more (training curves, ...) through `write_report(extra_sections=...)`.
`SampleLog` appends samples as they are scored, so an interrupted eval resumes
where it stopped. `<out>` may be local or `gs://`/`s3://` (model/fs.py).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import html
import json
import os
import subprocess
from typing import Any, Iterable, Mapping, Sequence

from model import fs


def fingerprint(*parts: Any) -> str:
    """SHA-256 of JSON-serialisable parts (suite settings, per-sample inputs)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=_json_default).encode("utf-8"))
    return h.hexdigest()


class SampleLog:
    """Append-only `samples_<task>.jsonl`; `done` maps sample id -> record already written.

    A torn last line (the process died mid-write) is dropped on open. With a
    `fingerprint` (see `fingerprint`), reopening for different inputs/settings raises.
    """

    def __init__(self, out_dir: str | os.PathLike, task: str, fingerprint: str | None = None,
                 read_only: bool = False):
        # read_only: a process that only reads the log another one writes (multi-host eval).
        self.read_only = read_only
        self.path = fs.path(out_dir) / f"samples_{task}.jsonl"
        self.done: dict[str, dict[str, Any]] = {}
        if fingerprint is not None:
            # What the samples were computed from (inputs + settings): resuming on
            # different inputs or settings would mix two evaluations, so refuse.
            fp_path = self.path.with_suffix(".fingerprint")
            old = fs.read_text(fp_path) if self.path.exists() and fp_path.exists() else None
            if old is not None and old != fingerprint:
                raise ValueError(
                    f"{self.path} was written for other inputs or settings than this run's "
                    f"(fingerprint {old[:12]} != {fingerprint[:12]}); use a new "
                    "output dir, or delete the samples file to recompute them")
            if not read_only:
                fs.write_text(fp_path, fingerprint)
        good = []
        if self.path.exists():
            for line in fs.read_text(self.path).splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.done[str(rec["sample_id"])] = rec
                good.append(line)
        self._out = None
        if not read_only:  # local: appended and synced per call; remote: see fs.Appender
            fs.write_text(self.path, "".join(l + "\n" for l in good))
            self._out = fs.Appender(self.path, fsync=True)

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        if self.read_only:
            for rec in records:
                self.done[str(rec["sample_id"])] = dict(rec)
            return
        lines = []
        for rec in records:
            if "sample_id" not in rec:
                raise ValueError("each sample record needs a 'sample_id'")
            lines.append(json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n")
            self.done[str(rec["sample_id"])] = dict(rec)
        if lines:
            self._out.write("".join(lines))

    def close(self) -> None:
        """Uploads what is pending (remote logs; also done at exit)."""
        if self._out is not None:
            self._out.close()

    def records(self) -> list[dict[str, Any]]:
        return list(self.done.values())


def _json_default(obj: Any) -> Any:
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclasses.dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclasses.dataclass
class Figure:
    name: str  # file stem under plots/
    caption: str
    png: bytes


@dataclasses.dataclass
class Section:
    """One titled part of the report: paragraphs, tables, figures (in that order)."""
    title: str
    paragraphs: Sequence[str] = ()
    tables: Sequence[Table] = ()
    figures: Sequence[Figure] = ()


def fmt(value: Any) -> str:
    """Compact cell text: 4 significant decimals for floats, '—' for None/nan."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:  # nan
            return "—"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """HEAD commit of the repository (with '+dirty' when the tree has changes)."""
    repo = repo or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    import importlib.metadata as md
    out = {}
    for pkg in ("jax", "jaxlib", "flax", "numpy", "jiwer", "whisper-normalizer", "scipy",
                "sentencepiece", "seqio", "tapestry"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def run_metadata(checkpoint: str | None, step: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(), "versions": versions(),
        "checkpoint": checkpoint, "checkpoint_step": step, **extra,
    }


def load_results(out_dir: fs.PathLike) -> dict[str, Any]:
    path = fs.path(out_dir) / "results.json"
    if path.exists():
        return json.loads(fs.read_text(path))
    return {"meta": {}, "tasks": {}}


def finite_or_none(value: Any) -> Any:
    """Replaces nan/inf floats (e.g. the stderr of n=1) by None, recursively: strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def save_results(out_dir: fs.PathLike, results: Mapping[str, Any]) -> fs.epath.Path:
    """Writes results.json atomically (`fs.write_text`); nan/inf become null."""
    return fs.write_text(fs.path(out_dir) / "results.json", json.dumps(
        finite_or_none(results), indent=2, default=_json_default, allow_nan=False))


def _md_table(t: Table) -> str:
    head = "| " + " | ".join(t.headers) + " |\n|" + "---|" * len(t.headers) + "\n"
    return head + "".join("| " + " | ".join(fmt(c) for c in r) + " |\n" for r in t.rows)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in r) + "</tr>"
                   for r in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}code{background:#f5f5f5;padding:0 3px}"""


def write_report(out_dir: fs.PathLike, title: str, meta: Mapping[str, Any],
                 sections: Sequence[Section],
                 extra_sections: Sequence[Section] = ()) -> tuple[fs.epath.Path, fs.epath.Path]:
    """Writes report.md (+ plots/*.png) and self-contained report.html; returns both paths."""
    out = fs.path(out_dir)
    all_sections = list(sections) + list(extra_sections)
    meta_rows = [(k, v if not isinstance(v, (dict, list)) else json.dumps(v))
                 for k, v in meta.items()]
    md = [f"# {title}\n", _md_table(Table(("run", "value"), meta_rows))]
    body = [f"<h1>{html.escape(title)}</h1>", _html_table(Table(("run", "value"), meta_rows))]
    for s in all_sections:
        md.append(f"\n## {s.title}\n")
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.paragraphs:
            md.append(p + "\n")
            body.append(f"<p>{html.escape(p)}</p>")
        for t in s.tables:
            md.append(_md_table(t))
            body.append(_html_table(t))
        for f in s.figures:
            fs.write_bytes(out / "plots" / f"{f.name}.png", f.png)
            md.append(f"\n![{f.caption}](plots/{f.name}.png)\n")
            b64 = base64.b64encode(f.png).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(f.caption)}" '
                        f'src="data:image/png;base64,{b64}"><figcaption>'
                        f"{html.escape(f.caption)}</figcaption></figure>")
    md_path, html_path = out / "report.md", out / "report.html"
    fs.write_text(md_path, "\n".join(md))
    fs.write_text(html_path,
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
    return md_path, html_path
