"""T5X-style gin flags shared by the entry points (`model.train`, `model.eval`).

    python -m model.train --gin_file=gin/runs/pretrain.gin \
        --gin.MODEL_DIR=/tmp/run --gin.TRAIN_STEPS=100 \
        --gin_bindings='train.log_every = 10'

`--gin_file` and `--gin_bindings` may repeat. `--gin.NAME=VALUE` is sugar for the
binding `NAME = VALUE`; a VALUE that is not a gin literal or reference (say a bare
path) is taken as a string, so `--gin.MODEL_DIR=/tmp/run` needs no quotes.

Everything is parsed and checked before any compute: no `--gin_file`, or one that
does not exist, is a one-line error naming it; an unknown configurable or
parameter fails in gin's parser (naming the binding); a macro set on the command line
that no configuration references (`--gin.TRAIN_STEPZ=3`) fails here, naming it and the
nearest known macro.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util  # noqa: F401  - gin's file loader uses it without importing it
import os
import pathlib
from typing import Sequence

import gin

from model import fs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class GinFlagError(ValueError):
    """A gin flag names something no configuration knows."""


def _as_gin_value(text: str) -> str:
    """Returns `text` when it parses as a gin value, else `text` quoted as a string."""
    stripped = text.strip()
    if stripped.startswith(("@", "%")):
        return stripped
    try:
        ast.literal_eval(stripped)
        return stripped
    except (ValueError, SyntaxError):
        return repr(text)


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with the three gin flags (extra args are `--gin.NAME=VALUE`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file (repo-relative or absolute); may repeat")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a gin binding, e.g. 'train.log_every = 10'; may repeat")
    parser.add_argument("--gin_search_paths", action="append", default=[],
                        help="extra directories to resolve gin files and includes")
    return parser


def split_macro_flags(extra: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Turns `--gin.NAME=VALUE` args into gin bindings; returns (bindings, {NAME: VALUE})."""
    bindings, macros = [], {}
    for arg in extra:
        if not arg.startswith("--gin."):
            raise GinFlagError(
                f"unknown flag {arg!r}: use --gin_file, --gin_bindings or --gin.NAME=VALUE")
        body = arg[len("--gin."):]
        if "=" not in body:
            raise GinFlagError(f"flag {arg!r} has no value: write --gin.NAME=VALUE")
        name, value = body.split("=", 1)
        bindings.append(f"{name} = {_as_gin_value(value)}")
        if "." not in name and "/" not in name:
            macros[name] = value
    return bindings, macros


def _macro_names() -> tuple[set[str], set[str]]:
    """(macros defined, macros referenced) in the parsed gin config."""
    config = gin.config._CONFIG  # pylint: disable=protected-access
    defined = {scope for (scope, selector) in config if selector == "gin.macro"}
    macro_fn = gin.get_configurable(gin.config.macro)
    referenced = {
        ref.scoped_selector.split("/gin.macro")[0]
        for ref in gin.config.iterate_references(config, to=macro_fn)
    }
    return defined, referenced


def check_macros_referenced(names: Sequence[str]) -> None:
    """Raises GinFlagError naming any macro in `names` that no binding references."""
    defined, referenced = _macro_names()
    for name in names:
        if name not in referenced:
            near = difflib.get_close_matches(name, sorted(referenced), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise GinFlagError(
                f"--gin.{name}: no configuration references macro %{name}.{hint} "
                f"Known macros: {sorted(referenced)}")
    del defined


def packaged_gin_root() -> list[str]:
    """[the folder holding the installed copy of gin/] (the wheel's `tapestry_gin/gin/`,
    pyproject.toml), or [] from a checkout: `gin/...` resolves with no checkout."""
    spec = importlib.util.find_spec("tapestry_gin")
    return list(spec.submodule_search_locations or [])[:1] if spec else []


def check_gin_files(files: Sequence[str], search_paths: Sequence[str]) -> None:
    """Raises GinFlagError (one line) when no gin file is given or one is missing."""
    if not files:
        raise GinFlagError("no --gin_file given: pass one, e.g. "
                           "--gin_file=gin/runs/pretrain_synthetic.gin")
    for name in files:
        if "://" in name or os.path.isabs(name):
            candidates = [fs.path(name)]
        else:
            candidates = [fs.path(root) / name for root in search_paths]
        if not any(c.exists() for c in candidates):
            raise GinFlagError(f"--gin_file={name}: no such file (looked in "
                               f"{', '.join(str(c) for c in candidates)})")


def parse_gin_flags(argv: Sequence[str] | None, description: str,
                    finalize: bool = True) -> argparse.Namespace:
    """Parses gin flags from `argv` (sys.argv[1:] when None) into the global gin config.

    Modules holding the configurables must be imported first (gin files may also
    `import` modules). Raises ValueError/GinFlagError naming a bad binding.
    """
    parser = make_parser(description)
    args, extra = parser.parse_known_args(argv)
    macro_bindings, macros = split_macro_flags(extra)
    search_paths = [str(REPO_ROOT), os.getcwd(), *packaged_gin_root(), *args.gin_search_paths]
    check_gin_files(args.gin_file, search_paths)
    for path in search_paths:
        gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings(
        args.gin_file, list(args.gin_bindings) + macro_bindings, finalize_config=False)
    check_macros_referenced(list(macros))
    if finalize:
        gin.finalize()
    return args
