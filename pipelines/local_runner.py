"""The local default runner: the FnApiRunner, with quiet worker processes.

In `multi_processing` mode the worker processes run pipelines/beam_worker.py (Beam's
own SDK harness, logging only warnings unless --verbose) and find this package
wherever the launcher did. Named by beam_options.LOCAL_RUNNER as a dotted path, so
only the launcher imports it (the workers import the job modules, not the runner).
"""
import logging
import os
import shlex
import sys

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import SubprocessSDKEnvironment


class _NoModeWarning(logging.Filter):
    """FnApiRunner warns that "in_memory" mode ignores direct_num_workers; ours does not (see run_pipeline)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("If direct_num_workers is not equal to 1")


logging.getLogger("apache_beam.runners.portability.fn_api_runner.fn_runner").addFilter(_NoModeWarning())


class LocalRunner(FnApiRunner):
    """The FnApiRunner, whose worker processes (multi_processing) run pipelines/beam_worker.py:
    Beam's own SDK harness, logging only warnings unless --verbose."""

    def run_pipeline(self, pipeline, options):
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode == "multi_processing":
            # The workers import this package from wherever the launcher did (not only from its cwd).
            root = shlex.quote(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            self._default_environment = SubprocessSDKEnvironment.from_command_string(
                f"PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}} {shlex.quote(sys.executable)} -m pipelines.beam_worker")
            direct.direct_running_mode = "in_memory"  # FnApiRunner keeps the environment set above
        return super().run_pipeline(pipeline, options)
