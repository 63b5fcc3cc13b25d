"""Encode every item with a model (H_V) into `item_embeddings`, and build its FAISS index.

    bin/r2ec-submit jobs/embed_items.py                       # the champion model
    bin/r2ec-submit jobs/embed_items.py --model models/recpo/best --index-kind hnsw
    bin/r2ec-submit jobs/embed_items.py --warehouse s3a://bucket/wh --model s3a://bucket/models/m1

Skips all work when both the table partition (model_version) and the index already hold every
current item for that model; --force rebuilds. The index lands in
WAREHOUSE/_index/<model_version>/ with a manifest that scoring checks against the model.
"""

from __future__ import annotations

import logging

from r2ec_batch import artifacts, cli, registry
from r2ec_batch.session import build_spark

log = logging.getLogger("embed_items")


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint folder / URI")
    p.add_argument("--index-kind", default="flat", choices=["flat", "hnsw", "ivf"],
                   help="flat = exact (default); others record their recall@10 vs exact")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--device", default=None, help="cpu / cuda (default: the task's GPU or cpu)")
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-embed-items")
    model = registry.resolve_verified(spark, a.warehouse, a.model)
    print(artifacts.build_index(spark, a.warehouse, model, kind=a.index_kind, force=a.force,
                                backend=a.backend, device=a.device), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
