"""Standard Beam PipelineOptions with an offline, parallel local default.

Any `--runner` (DataflowRunner, FlinkRunner, SparkRunner, ...) and its usual
flags pass straight through. Without one, jobs run on the FnApiRunner in
`multi_processing` mode with one worker process per core. Beam's own default,
DirectRunner, first tries the Prism runner, which downloads a binary at run time;
naming FnApiRunner keeps local runs offline and deterministic.
"""

from __future__ import annotations

import os
from typing import Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, WorkerOptions

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


def pipeline_options(beam_args: Sequence[str], *, num_workers: int | None = None) -> PipelineOptions:
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
            worker.default_sdk_harness_log_level = "WARNING"  # Worker processes log INFO per bundle.
    return options


def is_local(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner == LOCAL_RUNNER
