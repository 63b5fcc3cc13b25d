"""The JVM run whose loaded classes become the suite's class-data archive (tests/jvm_startup.py):

    SPARK_SUBMIT_OPTS=-XX:ArchiveClassesAtExit=A.jsa bin/r2ec-submit tests/jvm_warmup.py FOLDER

What most tests' JVMs do in their first seconds: start a Delta session, create, MERGE into and
read a small table, and run a pandas UDF."""

from __future__ import annotations

import sys

from pyspark.sql import functions as F

from r2ec_batch.session import build_spark

spark = build_spark("r2ec-jvm-warmup", quiet=True)
path = f"{sys.argv[1]}/t"
spark.range(50).withColumn("v", F.col("id") * 2).write.format("delta").save(path)
from delta.tables import DeltaTable  # noqa: E402 - needs the session's JVM

(DeltaTable.forPath(spark, path).alias("t")
 .merge(spark.range(40, 60).withColumn("v", F.col("id")).alias("s"), "t.id = s.id")
 .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
df = spark.read.format("delta").load(path)
df.mapInPandas(lambda it: (b.assign(v=b.v + 1) for b in it), df.schema).groupBy().sum("v").collect()
DeltaTable.forPath(spark, path).history(1).collect()
spark.stop()
