"""One promotion in its own process (its own JVM and Delta client), for the concurrency test:
    python tests/promote_child.py WAREHOUSE CHECKPOINT"""

import sys

from r2ec import checkpoint
from r2ec_batch import registry
from r2ec_batch.session import build_spark

if __name__ == "__main__":
    warehouse, model = sys.argv[1:3]
    spark = build_spark("r2ec-promote-child", quiet=True)
    registry.register(spark, warehouse, checkpoint.verify(model), model, "champion")
    print("promoted", checkpoint.verify(model)["model_version"], flush=True)
