"""The one Spark + Delta session builder that every job and the test suite use.

Where the Delta jars come from, in order:
1. `spark.jars`/`spark.jars.packages` already given (e.g. `spark-submit --packages io.delta:...`
   on a cluster): used as they are.
2. `$R2EC_DELTA_JARS` or the repo's `.jars/` folder, filled at set-up time by `make jars`
   (Maven copies delta-spark + delta-storage from Maven Central): works offline afterwards.
3. Otherwise `configure_spark_with_delta_pip`, i.e. Spark's Ivy resolves them at session start.

Sessions run in UTC, with few shuffle partitions (the data here is small; a cluster overrides it
with `--conf spark.sql.shuffle.partitions=...`), and with Arrow enabled for pandas UDFs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from jobs.cli import JobError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def delta_jars() -> list[str]:
    """Jar paths from $R2EC_DELTA_JARS or `<repo>/.jars`, or [] when neither holds any."""
    folder = Path(os.environ.get("R2EC_DELTA_JARS", REPO_ROOT / ".jars"))
    return sorted(str(p) for p in folder.glob("delta-*.jar")) if folder.is_dir() else []


def build_spark(
    app_name: str,
    master: str | None = None,
    shuffle_partitions: int | None = None,
    extra_conf: dict[str, str] | None = None,
    quiet: bool = False,
) -> SparkSession:
    """Get or create the Spark session with Delta enabled (see the module docstring)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run this interpreter (the venv with pandas, torch, ...), not `python3`.
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
        "spark.ui.enabled": "false",
        "spark.sql.debug.maxToStringFields": "500",  # wide plans otherwise warn on every job
        # Delta rebuilds table state with 50 partitions by default: far too many on one machine.
        "spark.databricks.delta.snapshotPartitions": os.environ.get("R2EC_DELTA_SNAPSHOT_PARTITIONS", "2"),
    }
    if not submitted:
        conf["spark.ui.showConsoleProgress"] = "false" if quiet else "true"
        conf["spark.driver.memory"] = os.environ.get("R2EC_DRIVER_MEMORY", "4g")
        conf["spark.sql.shuffle.partitions"] = str(shuffle_partitions or 8)
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
    got = spark.sparkContext.getConf()
    if submitted and "delta" not in got.get("spark.jars", "") + got.get("spark.jars.packages", ""):
        raise JobError(
            "Delta jars missing: launch with bin/r2ec-submit, or pass spark-submit --jars "
            ".jars/delta-spark_4.2_2.13-4.4.0.jar,.jars/delta-storage-4.4.0.jar "
            "(or --packages io.delta:delta-spark_4.2_2.13:4.4.0)"
        )
    if submitted and not got.contains("spark.sql.shuffle.partitions"):
        spark.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions or 8))
    spark.sparkContext.setLogLevel(os.environ.get("R2EC_SPARK_LOG_LEVEL", "WARN"))
    return spark
