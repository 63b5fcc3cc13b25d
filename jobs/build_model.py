"""Build the embedded default model (tokenizer trained on the catalogue + a small Qwen2) from
the `items` and `training_samples` tables, and register it.

    bin/r2ec-submit jobs/build_model.py --out models/default-init

The model starts with random weights: train it with `jobs/train.py --stage warmstart`.
"""

from __future__ import annotations

import logging

from pyspark.sql import functions as F

from r2ec.checkpoint import MANIFEST
from r2ec.config import DefaultModelConfig, PromptConfig
from r2ec_batch import cli, delta_io, registry, storage
from r2ec_batch.schemas import ITEMS, TRAINING_SAMPLES
from r2ec_batch.session import build_spark

log = logging.getLogger("build_model")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint folder or URI to write")
    p.add_argument("--dataset", default="ml-100k", help="prompt preset (category words)")
    p.add_argument("--register", choices=["none", "candidate", "champion"], default="candidate",
                   help="status of the new model in model_registry")
    cli.add_dataclass_args(p, DefaultModelConfig)
    a = cli.parse_with_config(p, argv)
    cli.setup_logging(a.verbose)
    cfg = cli.dataclass_from_args(a, DefaultModelConfig)
    spark = build_spark("r2ec-build-model")
    from r2ec.default_model import build

    items = delta_io.read(spark, a.warehouse, ITEMS).select("item_id", "title", "attributes").toPandas()
    train = (delta_io.read(spark, a.warehouse, TRAINING_SAMPLES).filter(F.col("split") == "train")
             .orderBy("sample_id").limit(50_000).toPandas())
    with storage.output_dir(a.out, last=MANIFEST) as out:
        manifest = build(items, train, out, cfg, PromptConfig.for_dataset(a.dataset))
    if a.register != "none":
        registry.register(spark, a.warehouse, manifest, a.out, a.register)
    print(f"built {manifest['model_version']} ({manifest['parameters'] / 1e6:.2f}M parameters) "
          f"in {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
