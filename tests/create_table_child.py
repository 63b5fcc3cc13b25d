"""One of the processes of tests/test_schemas.py's table-creation race:

    python tests/create_table_child.py WAREHOUSE READY_FILE GO_FILE

Starts its own local Spark session (its own JVM), says it is ready, waits for the go file, then
creates `evaluations` with `delta_io.ensure_table` and prints the table's column names as JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from r2ec_batch import cli, delta_io
from r2ec_batch.schemas import EVALUATIONS
from r2ec_batch.session import build_spark

warehouse, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cli.setup_logging()
spark = build_spark("r2ec-create-race", master="local[1]", quiet=True)
spark.range(1).count()  # the JVM and Delta's classes are warm before the race starts
ready.touch()
while not go.exists():
    time.sleep(0.005)
table = delta_io.ensure_table(spark, warehouse, EVALUATIONS)
print(json.dumps(table.toDF().schema.fieldNames()), flush=True)
spark.stop()
