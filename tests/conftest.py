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
