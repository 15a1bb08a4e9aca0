"""Command lines of the Beam jobs: our flags, standard PipelineOptions, an offline local default.

    parser = beam_options.make_parser(__doc__)       # help shows every default
    parser.add_argument("--cache_dir", required=True, help="...")
    args, options = beam_options.parse(parser, argv)  # unknown flags: error naming them

Flags a job does not define itself must be Beam PipelineOptions (any `--runner`,
DataflowRunner, FlinkRunner, SparkRunner, ... and their usual flags); anything
else is an error that names the flag and the nearest known one (Beam alone only
logs and drops it). Without a runner, jobs run on the FnApiRunner (local_runner.py) in
`multi_processing` mode with one worker process per core: Beam's own default,
DirectRunner, first tries the Prism runner, which downloads a binary at run time;
naming FnApiRunner keeps local runs offline and deterministic. Beam's INFO and
WARNING chatter is silenced unless `--verbose`; the job's own result line stays.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
from typing import Sequence

from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions, StandardOptions, WorkerOptions,
                                                  _BeamArgumentParser)

LOCAL_RUNNER = "pipelines.local_runner.LocalRunner"  # its own module: workers never import the runner
LOCAL_RUNNERS = (LOCAL_RUNNER, "apache_beam.runners.portability.fn_api_runner.FnApiRunner", "FnApiRunner")
VERBOSE_ENV = "TAPESTRY_BEAM_VERBOSE"  # read by the worker processes (pipelines/beam_worker.py)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and "(default: ...)" after every flag's help."""


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--verbose", action="store_true", help="show Beam's INFO logs")
    return parser


def _beam_parser() -> argparse.ArgumentParser:
    """Every flag of every registered PipelineOptions class (as PipelineOptions.get_all_options builds it)."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def unknown_beam_flags(beam_args: Sequence[str]) -> list[str]:
    """The flags in `beam_args` that no PipelineOptions class defines."""
    _, unknown = _beam_parser().parse_known_args(list(beam_args))
    return unknown


def check_beam_flags(parser: argparse.ArgumentParser, beam_args: Sequence[str]) -> None:
    """parser.error naming each flag that is neither the job's nor a Beam PipelineOptions flag."""
    unknown = unknown_beam_flags(beam_args)
    if not unknown:
        return
    known = [o for a in parser._actions for o in a.option_strings]  # pylint: disable=protected-access
    known += [o for a in _beam_parser()._actions for o in a.option_strings]  # pylint: disable=protected-access
    hints = []
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1) if arg.startswith("-") else []
        hints.append(f"{arg}" + (f" (did you mean {close[0]}?)" if close else ""))
    parser.error(f"unrecognized arguments: {', '.join(hints)}; neither this job's flags (see --help) "
                 "nor Beam PipelineOptions")


def quiet_logging(verbose: bool) -> None:
    """WARNING for our modules; Beam, absl and friends only ERROR unless `verbose` (then INFO)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("apache_beam", "absl", "root"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.pop(VERBOSE_ENV, None)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
          *, num_workers: int | None = None) -> tuple[argparse.Namespace, PipelineOptions]:
    """Our flags and the PipelineOptions built from the rest; unknown flags are a parser error."""
    args, beam_args = parser.parse_known_args(argv)
    check_beam_flags(parser, beam_args)
    quiet_logging(getattr(args, "verbose", False))
    return args, pipeline_options(beam_args, num_workers=num_workers, verbose=getattr(args, "verbose", False))


def pipeline_options(beam_args: Sequence[str], *, num_workers: int | None = None,
                     verbose: bool = False) -> PipelineOptions:
    """PipelineOptions from the flags the job did not consume itself."""
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "multi_processing"
        # DirectOptions defaults direct_num_workers to 1, so "unset" means: not on the command line.
        if not any(a.startswith("--direct_num_workers") for a in beam_args):
            direct.direct_num_workers = num_workers or os.cpu_count() or 1
        worker = options.view_as(WorkerOptions)
        if not worker.default_sdk_harness_log_level:
            worker.default_sdk_harness_log_level = "INFO" if verbose else "WARNING"
    return options


def is_local(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner in LOCAL_RUNNERS
