"""The pipeline on a real multi-process Spark cluster with its warehouse on an object store.

A standalone cluster (one master, two workers; separate JVMs from the pyspark inside the
packaged environment) and an S3 server (moto) on 127.0.0.1, both started here and stopped at the
end. Every job is submitted with that environment's spark-submit, as on a cluster node: Python
from `dist/deps/r2ec-deps.tar` (unpacked once and kept, as a node image would be) with the
project's wheel installed into it, never from this checkout. The pipeline runs as one
application (tests/cluster_pipeline.py), and one of the two workers is killed (SIGKILL, with its
executor) while the score step's tasks run on it. Tables, model and index live on s3a://;
executors fetch the model and the index into their own cache. Every table must equal those of
local mode on the same slice: the lost worker changes nothing. (One application for both
claims: a second one only to kill a worker cost this test a driver, two executors and a
scoring run more, about a minute of the suite's two cores.)

Needs `make dist-test` and `make jars-s3a` (both part of `make test`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from tests import jvm_startup
from tests.conftest import ML100K_AS_OF, REPO, write_ml100k_slice

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

DEPS_ARCHIVE = REPO / "dist" / "deps" / "r2ec-deps.tar"
S3A_JARS = REPO / ".jars" / "s3a"
PIPELINE = REPO / "tests" / "cluster_pipeline.py"
BUCKET = "r2ec-test"
RUN = "1998-04-23"
CLUSTER_USERS = 60
TINY = ["--hidden-size", "64", "--num-heads", "2", "--head-dim", "32", "--intermediate-size", "128",
        "--vocab-size", "2000"]
SCORE_ARGS = ["--max-new-tokens", "6", "--chunk-size", "8", "--publish"]
EVAL_ARGS = ["--split", "test", "--limit", "150", "--max-new-tokens", "6"]
# the suite's settings for short-lived JVMs (tests/jvm_startup.py), for every JVM of the cluster
JIT = f"{jvm_startup.CHILD_JIT} {jvm_startup.LOGS}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ok, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if ok():
                return
        except (OSError, ValueError, LookupError):  # not up yet, or a UI still starting
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def _json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _unpacked_deps() -> Path:
    """dist/deps' archive unpacked once per archive (6 GB, minutes on 2 cores), kept beside it
    for later runs as a node image keeps its environment; a different archive (new pins) gets a
    new folder and the old one is removed. Unpacked under a temporary name and renamed, so an
    interrupted unpack is never taken for a whole one."""
    st = DEPS_ARCHIVE.stat()
    cache = REPO / "dist" / "node-env"
    env = cache / f"{st.st_size}-{st.st_mtime_ns}"
    if not (env / "bin" / "python").exists():
        shutil.rmtree(cache, ignore_errors=True)
        partial = cache / "unpacking"
        partial.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(DEPS_ARCHIVE), "-C", str(partial)], check=True)
        partial.rename(env)
    return env


@pytest.fixture(scope="module")
def node_env():
    """The node's environment: the deps archive unpacked, the project's wheel installed into it
    (what `make dist` packs into dist/r2ec-env.tar), never this checkout."""
    wheels = sorted((REPO / "dist").glob("r2ec_batch-*.whl"))
    if not DEPS_ARCHIVE.is_file() or not wheels or not any(S3A_JARS.glob("hadoop-aws-*.jar")):
        pytest.fail("the cluster tests need `make dist-test` and `make jars-s3a` (make test runs both)")
    env = _unpacked_deps()
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--force-reinstall", "--no-index", str(wheels[-1])], check=True)
    probe = subprocess.run([str(env / "bin" / "python"), "-c",
                            "import r2ec_batch.jobs.score, r2ec, torch, faiss, s3fs; "
                            "print(r2ec_batch.__file__)"],
                           capture_output=True, text=True, cwd=env, check=True)
    assert str(env) in probe.stdout, "the project must come from the packaged environment"
    return env


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3-compatible server on loopback; the environment its clients need."""
    port = _free_port()
    server = Path(sys.executable).parent / "moto_server"
    with open(tmp_path_factory.mktemp("s3") / "moto.log", "w") as log:  # the child keeps its copy
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1"}
    try:
        _wait("S3 server", lambda: urllib.request.urlopen(url, timeout=2).status == 200, 60)
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # this process's fsspec / deltalake reads
        yield env
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        _stop(proc)


class Cluster:
    def __init__(self, env: Path, s3_env: dict, root: Path):
        self.env, self.s3_env, self.root = env, s3_env, root
        self.spark_home = next((env / "lib").glob("python3*/site-packages/pyspark"))
        self.port, self.ui = _free_port(), _free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.cwd = root / "driver-cwd"
        self.cwd.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.daemon_env = {**os.environ, **s3_env, "SPARK_HOME": str(self.spark_home),
                           "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(root / "logs"),
                           "PYSPARK_PYTHON": str(env / "bin" / "python")}
        for k in ("PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV", "PYTHONPATH", "R2EC_SPARK_PROPERTIES"):
            self.daemon_env.pop(k, None)
        # JIT without this checkout's class-data archive: the node's pyspark is another class path
        self.daemon_env.update(SPARK_DAEMON_JAVA_OPTS=JIT, SPARK_SUBMIT_OPTS=JIT)

    def start(self) -> None:
        cls = str(self.spark_home / "bin" / "spark-class")
        self._daemon("master", [cls, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                "--port", str(self.port), "--webui-port", str(self.ui)])
        for i in (1, 2):
            self._daemon(f"worker{i}", [
                cls, "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
                "--cores", "1", "--memory", "4g", "--webui-port", str(_free_port()),
                "--work-dir", str(self.root / f"work{i}")])
        _wait("2 workers", lambda: self.alive_workers() == 2, 180)

    def _daemon(self, name: str, cmd: list[str]) -> None:
        with open(self.root / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                env=self.daemon_env, start_new_session=True)

    def alive_workers(self) -> int:
        state = _json(f"http://127.0.0.1:{self.ui}/json/")
        return sum(w["state"] == "ALIVE" for w in state["workers"])

    def submit(self, job: str, *args: str, ui_port: int | None = None,
               background: bool = False) -> subprocess.Popen | subprocess.CompletedProcess:
        jars = ",".join(str(p) for p in sorted((REPO / ".jars").glob("delta-*.jar")))
        s3a = ":".join(str(p) for p in sorted(S3A_JARS.glob("*.jar")))
        endpoint = self.s3_env["AWS_ENDPOINT_URL"]
        conf = {
            "spark.pyspark.python": f"{self.env}/bin/python",
            "spark.pyspark.driver.python": f"{self.env}/bin/python",
            # the AWS SDK bundle is read from each node's disk, not shipped per application
            "spark.driver.extraClassPath": s3a, "spark.executor.extraClassPath": s3a,
            "spark.executor.memory": "1g",
            "spark.executor.extraJavaOptions": JIT,
            "spark.hadoop.fs.s3a.endpoint": endpoint,
            "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            "spark.hadoop.fs.s3a.access.key": "testing", "spark.hadoop.fs.s3a.secret.key": "testing",
            "spark.executorEnv.R2EC_CACHE_DIR": str(self.root / "executor-cache"),
            # small tables: few shuffle partitions, and Delta's table state in 2 tasks, not 50
            "spark.sql.shuffle.partitions": "4",
            "spark.databricks.delta.snapshotPartitions": "2",
            # Spark's own catalog folder (created at start even when unused) goes to the store
            "spark.sql.warehouse.dir": f"s3a://{BUCKET}/spark-catalog",
            "spark.ui.port": str(ui_port or _free_port()),
            **{f"spark.executorEnv.{k}": v for k, v in self.s3_env.items()},
        }
        cmd = [str(self.spark_home / "bin" / "spark-submit"), "--master", self.url,
               "--driver-memory", "2g", "--jars", jars]
        for k, v in conf.items():
            cmd += ["--conf", f"{k}={v}"]
        site = self.spark_home.parent
        entry = PIPELINE if job == "pipeline" else site / "r2ec_batch" / "jobs" / f"{job}.py"
        cmd += [str(entry), *args]
        env = {**self.daemon_env, "PYSPARK_DRIVER_PYTHON": f"{self.env}/bin/python",
               "R2EC_CACHE_DIR": str(self.root / "driver-cache"), "HF_HUB_OFFLINE": "1"}
        if background:  # its output to a file: a pipe nobody reads would block the driver
            with open(self.root / f"{job}.log", "w") as log:  # the child keeps its copy
                return subprocess.Popen(cmd, cwd=self.cwd, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        res = subprocess.run(cmd, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, f"{job} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
        return res

    def stop(self) -> None:
        for p in self.procs.values():
            _stop(p)


@pytest.fixture(scope="module")
def cluster(node_env, s3, tmp_path_factory):
    c = Cluster(node_env, s3, tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def data_slice(ml100k_dir, tmp_path_factory) -> Path:
    """ML-100k's first CLUSTER_USERS users and the whole catalogue (fewer users than the
    suite's slice: five JVMs share the two cores here)."""
    return write_ml100k_slice(ml100k_dir, tmp_path_factory.mktemp("slice"), CLUSTER_USERS)


@pytest.fixture(scope="module")
def local_run(spark, data_slice, tmp_path_factory):
    """The reference: the same jobs in local mode, in this process, on local folders."""
    from r2ec_batch.jobs import build_histories, build_model, embed_items, evaluate, ingest, score

    wh = tmp_path_factory.mktemp("local") / "wh"
    model = wh.parent / "tiny"
    w = ["--warehouse", str(wh)]
    assert ingest.main(["--source", "ml-100k", "--path", str(data_slice), *w]) == 0
    assert build_histories.main(["--as-of", ML100K_AS_OF, *w]) == 0
    assert build_model.main(["--out", str(model), "--register", "none", *TINY, *w]) == 0
    m = ["--model", str(model)]
    assert embed_items.main([*m, *w]) == 0
    assert score.main(["--run-date", RUN, "--as-of", ML100K_AS_OF, *m, *SCORE_ARGS, *w]) == 0
    assert evaluate.main([*m, *EVAL_ARGS, *w]) == 0
    return wh, model


def _kill_a_scoring_worker(cluster: Cluster, ui: int, job: subprocess.Popen) -> str:
    """Wait until the score step's tasks have run for 3 s on the executors, then SIGKILL the
    worker (and its executor) that runs one of them; returns the worker's name."""
    api = f"http://127.0.0.1:{ui}/api/v1/applications"
    first_seen: dict[int, float] = {}
    victim, app = None, None

    def busy_scoring_executor() -> bool:
        """The scoring stage: 2 tasks (one partition per core) of a job of the score step,
        running for seconds where the step's other stages take well under one."""
        nonlocal victim, app
        if job.poll() is not None:
            raise AssertionError(f"the pipeline ended before a worker could be killed: "
                                 f"{(cluster.root / 'pipeline.log').read_text()[-4000:]}")
        app = _json(api)[0]["id"]
        scoring = {s for j in _json(f"{api}/{app}/jobs?status=running")
                   if j.get("jobGroup") == "score" for s in j["stageIds"]}
        for st in _json(f"{api}/{app}/stages?status=active"):
            if st["stageId"] in scoring and st["numTasks"] == 2 and st["numActiveTasks"] > 0:
                first_seen.setdefault(st["stageId"], time.time())
        if not any(time.time() - t >= 3 for t in first_seen.values()):
            return False
        busy = [e for e in _json(f"{api}/{app}/executors")
                if e["id"] != "driver" and e["activeTasks"] > 0]
        victim = busy[0] if busy else None
        return victim is not None

    _wait("scoring tasks on the executors", busy_scoring_executor, 600)
    # The executor runs inside the process group of the worker that launched it: kill both.
    pattern = f"--executor-id {victim['id']} .*--app-id {app}"
    pid = int(subprocess.run(["pgrep", "-f", "--", pattern],
                             capture_output=True, text=True).stdout.split()[0])
    group = os.getpgid(pid)
    worker = next(n for n, p in cluster.procs.items() if p.pid == group)
    os.killpg(group, signal.SIGKILL)
    return worker


@pytest.fixture(scope="module")
def cluster_run(cluster, local_run, data_slice):
    """The pipeline as one application (one driver, one set of executors), with one worker
    killed in the middle of its score step."""
    from r2ec_batch import storage

    _, model = local_run
    raw, wh = f"s3a://{BUCKET}/raw/ml-100k", f"s3a://{BUCKET}/wh"
    model_uri = f"s3a://{BUCKET}/models/tiny"
    storage.publish_dir(data_slice, raw)
    storage.publish_dir(model, model_uri, last="manifest.json")
    w, m = ["--warehouse", wh], ["--model", model_uri]
    steps = [["ingest", "--source", "ml-100k", "--path", raw, *w],
             ["build_histories", "--as-of", ML100K_AS_OF, *w],
             ["embed_items", *m, *w],
             ["score", "--run-date", RUN, "--as-of", ML100K_AS_OF, *m, *SCORE_ARGS, *w],
             ["evaluate", *m, *EVAL_ARGS, *w]]
    ui = _free_port()
    job = cluster.submit("pipeline", json.dumps(steps), ui_port=ui, background=True)
    try:
        killed = _kill_a_scoring_worker(cluster, ui, job)
        job.wait(timeout=900)
    finally:
        _stop(job)
    out = (cluster.root / "pipeline.log").read_text()
    assert job.returncode == 0, out[-6000:]
    return wh, killed, out


def _read(wh, name: str, sort: list[str]) -> pd.DataFrame:
    from r2ec_batch import storage

    uri = storage.join(str(wh), name)
    df = DeltaTable(uri, storage_options=storage.delta_rs_options(uri)).to_pandas()
    return df.sort_values(sort).reset_index(drop=True)


# Times of writing, and run ids (made of that time): differ between any two runs.
VOLATILE_COLUMNS = {"created_at", "evaluated_at", "ingested_at", "updated_at", "published_at",
                    "run_id"}


def _same(local: pd.DataFrame, remote: pd.DataFrame, float_cols=()) -> None:
    assert len(local) == len(remote) > 0
    for col in local.columns:
        if col in VOLATILE_COLUMNS:
            continue
        if col in float_cols:
            a, b = local[col].to_list(), remote[col].to_list()
            np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                                       rtol=1e-4, atol=1e-5, err_msg=col)
        else:
            assert local[col].astype(str).equals(remote[col].astype(str)), col


def test_cluster_on_object_store_with_a_worker_killed_mid_scoring_gives_the_local_tables(
        local_run, cluster_run, cluster):
    lw, (rw, killed, out) = local_run[0], cluster_run
    # the worker died with its executor, and the application went on without it
    assert killed.startswith("worker") and cluster.alive_workers() <= 1
    assert re.search(r"lost executor|executorlost", out, re.IGNORECASE), out[-4000:]
    for name, key in (("interactions", ["user_id", "item_id", "ts"]), ("items", ["item_id"]),
                      ("training_samples", ["sample_id"]),
                      ("user_histories", ["as_of_date", "user_id"])):
        _same(_read(lw, name, key), _read(rw, name, key))
    _same(_read(lw, "item_embeddings", ["item_id"]), _read(rw, "item_embeddings", ["item_id"]),
          float_cols=("embedding",))
    recs_key = ["run_date", "user_id", "rank"]
    recs = _read(rw, "recommendations", recs_key)
    assert len(recs) == CLUSTER_USERS * 10
    _same(_read(lw, "recommendations", recs_key), recs, float_cols=("score",))
    rats = _read(rw, "rationales", ["run_date", "user_id"])
    assert len(rats) == CLUSTER_USERS
    _same(_read(lw, "rationales", ["run_date", "user_id"]), rats)
    _same(_read(lw, "published_runs", ["run_date", "variant"]),
          _read(rw, "published_runs", ["run_date", "variant"]))
    ev_key = ["model_version", "split", "mode", "metric", "k"]
    _same(_read(lw, "evaluations", ev_key), _read(rw, "evaluations", ev_key), float_cols=("value",))
    # Nothing written on local disk but caches: the driver's working folder stays empty, and
    # the executors fetched the model and the index from the store into their own cache.
    assert not any(cluster.cwd.iterdir()), sorted(p.name for p in cluster.cwd.iterdir())
    cached = {p.parent.name for p in (cluster.root / "executor-cache").glob("*/*")}
    assert {"models", "index"} <= cached
