"""The one Spark + Delta session builder that every job and the test suite use.

Where the Delta jars come from, in order:
1. `spark.jars`/`spark.jars.packages` already given (e.g. `spark-submit --packages io.delta:...`
   on a cluster): used as they are.
2. `$R2EC_DELTA_JARS` or the repo's `.jars/` folder, filled at set-up time by `make jars`
   (Maven copies delta-spark + delta-storage from Maven Central): works offline afterwards.
3. Otherwise `configure_spark_with_delta_pip`, i.e. Spark's Ivy resolves them at session start.

Sessions run in UTC with Arrow enabled for pandas UDFs. Local-mode defaults (no UI, 4g driver,
8 shuffle partitions, small Delta snapshots, 8 tasks to list a table's files for VACUUM) apply
only when the master is local: on a cluster the platform's and spark-submit's settings stand.
Whether Delta is there is found out by calling it, so a platform with Delta built in
(Databricks) needs no jars from us. `$R2EC_SPARK_PROPERTIES` names a properties file whose
`spark.*` settings a session started here takes (bin/r2ec-submit passes the same file to
spark-submit as --properties-file); the test suite uses it for its small-data settings.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from r2ec_batch import storage
from r2ec_batch.cli import JobError

LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def delta_jars() -> list[str]:
    """Jar paths from $R2EC_DELTA_JARS or `<repo>/.jars`, or [] when neither holds any."""
    folder = Path(os.environ.get("R2EC_DELTA_JARS", REPO_ROOT / ".jars"))
    return sorted(str(p) for p in folder.glob("delta-*.jar")) if folder.is_dir() else []


def properties_file(path: str | Path) -> dict[str, str]:
    """The settings of a Spark properties file: `key value` or `key=value` lines, `#` comments.
    Only `spark.*` keys: anything else is a mistake worth stopping for, not a setting to skip."""
    conf: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"(spark\.[^\s=:]+)\s*[=:\s]\s*(\S.*)", line)
        if m is None:
            raise JobError(f"{path}:{n}: expected 'spark.<name> <value>', got {line[:80]!r}")
        conf[m[1]] = m[2]
    return conf


def _is_local(master: str) -> bool:
    return master.startswith("local")


def _delta_works(spark: SparkSession) -> bool:
    """Whether Delta's classes are on the JVM's class path: ask Delta itself (a platform with
    Delta built in, such as Databricks, declares no jars for it)."""
    from delta.tables import DeltaTable

    try:
        DeltaTable.isDeltaTable(spark, "file:///nonexistent/r2ec-delta-probe")
        return True
    except Exception:  # noqa: BLE001 - py4j reports a missing class in several ways
        return False


def build_spark(
    app_name: str,
    master: str | None = None,
    shuffle_partitions: int | None = None,
    extra_conf: dict[str, str] | None = None,
    quiet: bool = False,
    metastore: str | None = None,
) -> SparkSession:
    """Get or create the Spark session with Delta enabled (see the module docstring).

    `metastore`: a local folder for an embedded Hive metastore (Derby) that keeps table names
    across sessions (jobs/register_tables.py, jobs/sql.py); None = the session's own catalog
    (in-memory locally; the platform's Hive metastore, Glue or Unity Catalog on a cluster)."""
    if _local_intent(master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run this interpreter (the venv with pandas, torch, ...), not `python3`;
    # under spark-submit the cluster's own setting (spark.pyspark.python, an archive) wins.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # spark-submit starts the JVM before Python runs and passes its settings (master, jars,
    # shuffle partitions) there; then only settings it cannot have made are added here.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        builder = builder.master(master or os.environ.get("R2EC_SPARK_MASTER", "local[2]"))
    conf = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.debug.maxToStringFields": "500",  # wide plans otherwise warn on every job
    }
    if not submitted and _local_intent(master):
        # A session this process starts on one machine: no UI port, a driver big enough for
        # the model, a progress bar only when someone watches.
        conf["spark.ui.enabled"] = "false"
        conf["spark.ui.showConsoleProgress"] = "false" if quiet else "true"
        conf["spark.driver.memory"] = os.environ.get("R2EC_DRIVER_MEMORY", "4g")
    if not submitted and os.environ.get("R2EC_SPARK_PROPERTIES"):
        conf.update(properties_file(os.environ["R2EC_SPARK_PROPERTIES"]))
    if metastore:
        conf.update(hive_metastore_conf(metastore))
    conf.update(extra_conf or {})
    for k, v in conf.items():
        builder = builder.config(k, v)
    if not submitted:
        jars = delta_jars()
        if jars:
            builder = builder.config("spark.jars", ",".join(jars))
        else:
            from delta import configure_spark_with_delta_pip

            log.warning("no Delta jars in .jars/ or $R2EC_DELTA_JARS; resolving them with Ivy")
            builder = configure_spark_with_delta_pip(builder)
    spark = builder.getOrCreate()
    if not _delta_works(spark):
        raise JobError(
            "Delta Lake is not on this Spark's class path: launch with bin/r2ec-submit, or pass "
            "spark-submit --jars .jars/delta-spark_4.2_2.13-4.4.0.jar,.jars/delta-storage-4.4.0.jar "
            "(or --packages io.delta:delta-spark_4.2_2.13:4.4.0)"
        )
    if metastore:
        # Derby writes derby.log into the working directory unless told otherwise; the Hive
        # client starts on the first catalog call, after this.
        spark._jvm.java.lang.System.setProperty(
            "derby.stream.error.file", str(Path(metastore).resolve() / "derby.log"))
    got = spark.sparkContext.getConf()
    if _is_local(spark.sparkContext.master):
        # The data of one machine is small: few shuffle partitions, and Delta rebuilds table
        # state with 2 partitions instead of 50. A cluster keeps its own settings.
        if not got.contains("spark.sql.shuffle.partitions"):
            spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions or 8))
        spark.conf.set("spark.databricks.delta.snapshotPartitions",
                       os.environ.get("R2EC_DELTA_SNAPSHOT_PARTITIONS", "2"))
        # VACUUM lists a table's folders in one Spark job of this many tasks (10,000 by
        # default): on one machine that is ~25 s of empty tasks per table, 3 s with 8.
        if not got.contains(LISTING_PARALLELISM):
            spark.conf.set(LISTING_PARALLELISM, "8")
    elif shuffle_partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))
    spark.sparkContext.setLogLevel(os.environ.get("R2EC_SPARK_LOG_LEVEL", "WARN"))
    return spark


def metastore_arguments(p) -> None:
    """The catalog flags of jobs/register_tables.py and jobs/sql.py (one meaning for both)."""
    p.add_argument("--schema", default="r2ec", help="database / schema of the table names")
    p.add_argument("--catalog", default=None,
                   help="catalog of a three-level namespace (Unity Catalog: main); default: the "
                        "session's current catalog")
    p.add_argument("--metastore", default=None,
                   help="folder of the embedded Hive metastore, or 'none' for the session's own "
                        "catalog (default: $R2EC_METASTORE, else <warehouse>/_metastore for a "
                        "local warehouse, else none)")


def resolve_metastore(arg: str | None, warehouse: str) -> str | None:
    """--metastore, then $R2EC_METASTORE, then <warehouse>/_metastore for a local warehouse."""
    value = arg or os.environ.get("R2EC_METASTORE")
    if not value and storage.is_local(warehouse):
        value = str(storage.local_path(storage.join(warehouse, "_metastore")))
    return None if value in (None, "", "none") else value


def hive_metastore_conf(folder: str) -> dict[str, str]:
    """Settings for an embedded Hive metastore in `folder`: Spark's bundled Hive client with a
    Derby database, created on first use. Derby admits one process at a time, which suits one
    machine's jobs run one after the other; a team shares a real metastore instead."""
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={root / 'metastore_db'};create=true",
        # Only external tables are registered; managed ones (none) would land here.
        "spark.sql.warehouse.dir": str(root / "managed"),
    }


def _local_intent(master: str | None) -> bool:
    """Whether this process will start a local-mode session (before the session exists)."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        return False  # spark-submit decided; SPARK_LOCAL_IP is bin/r2ec-submit's business
    return _is_local(master or os.environ.get("R2EC_SPARK_MASTER", "local[2]"))
