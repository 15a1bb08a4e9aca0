"""Worker process of the local runner (local_runner.LocalRunner): Beam's SDK harness, quiet.

Beam's harness logs INFO lines per worker start, channel and bundle to stderr (and
its import warns about optional GCP clients); a job's one result line drowned in
them. Here stderr gets Beam's errors and our own warnings only, unless the launcher ran with
--verbose (environment variable TAPESTRY_BEAM_VERBOSE=1).
"""
import logging
import os
import sys


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("apache_beam") or record.name == "root":  # Beam's own chatter: errors only
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if os.environ.get("TAPESTRY_BEAM_VERBOSE") != "1":
        handler.addFilter(_WarningsOnly())
        # Also kept from the runner's log channel: a warning about an unused Dataflow feature per worker.
        logging.getLogger("apache_beam.runners.worker.sdk_worker_main").setLevel(logging.ERROR)
    logging.getLogger().addHandler(handler)
    from apache_beam.runners.worker import sdk_worker_main  # pylint: disable=g-import-not-at-top

    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
