"""Shared fixtures: one local Spark + Delta session per test run, and one ML-100k warehouse
built by the real jobs (ingest -> build_histories) that the Spark tests read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO / "data" / "raw" / "ml-100k"
# The day after ML-100k's last event: user_histories then hold every user's latest window.
ML100K_AS_OF = "1998-04-23"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def spark():
    from jobs.session import build_spark

    session = build_spark("r2ec-tests", quiet=True, shuffle_partitions=4)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.fail(f"ML-100k is missing at {ML100K}: run `make data` (make test does it)")
    return ML100K


@pytest.fixture(scope="session")
def ml_warehouse(spark, ml100k_dir, tmp_path_factory) -> Path:
    """ML-100k ingested and turned into samples/histories by the jobs themselves."""
    from jobs import build_histories, ingest

    wh = tmp_path_factory.mktemp("ml100k_wh")
    assert ingest.main(["--source", "ml-100k", "--path", str(ml100k_dir),
                        "--warehouse", str(wh)]) == 0
    assert build_histories.main(["--as-of", ML100K_AS_OF, "--warehouse", str(wh)]) == 0
    return wh


def delta_version(path: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()
