"""Shared test settings: where the real data lives, and CPU-only JAX."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = pathlib.Path(os.environ.get("TAPESTRY_DATA_DIR", REPO.parent / "shared" / "data"))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The real-data directory (TAPESTRY_DATA_DIR); skips the test when absent."""
    if not DATA_DIR.is_dir():
      pytest.skip(f"real data not found at {DATA_DIR}; set TAPESTRY_DATA_DIR to run this test")
    return DATA_DIR


@pytest.fixture(autouse=True, scope="module")
def _fresh_process_globals():
    """Test files share worker processes (xdist): undo the process-wide state one file may
    leave for the next (per module, before the module's own fixtures set theirs): SeqIO's
    global cache dirs and each task's resolved cache dir."""
    import sys
    seqio = sys.modules.get("seqio")
    if seqio is not None:
        seqio.set_global_cache_dirs([])
        for name in seqio.TaskRegistry.names():
            task = seqio.TaskRegistry.get(name)
            if hasattr(task, "_cache_dir"):
                task._cache_dir = None  # pylint: disable=protected-access
    yield


@pytest.fixture(autouse=True)
def _tapestry_logs_reach_caplog():
    """The CLIs detach the 'tapestry' logger from the root; caplog reads the root."""
    import logging
    logging.getLogger("tapestry").propagate = True
    yield
