"""Encode every item with a model (H_V) into `item_embeddings`, and build its FAISS index.

    bin/r2ec-submit jobs/embed_items.py                       # the champion model
    bin/r2ec-submit jobs/embed_items.py --model models/recpo/best --index-kind hnsw

Skips all work when both the table partition (model_version) and the index already hold every
current item for that model; --force rebuilds. The index lands in
WAREHOUSE/_index/<model_version>/ with a manifest that scoring checks against the model.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

from jobs import cli, delta_io, registry
from jobs.session import build_spark
from schemas import ITEM_EMBEDDINGS, ITEMS
from udfs.scoring import EMBED_SCHEMA, embed_udf

log = logging.getLogger("embed_items")


def index_dir(warehouse, model_version: str) -> Path:
    return Path(warehouse).resolve() / "_index" / model_version


def _index_up_to_date(folder: Path, version: str, n_items: int) -> bool:
    from r2ec.index import IndexMismatch, ItemIndex

    try:
        idx = ItemIndex.load(folder, expect_model_version=version)
    except (IndexMismatch, FileNotFoundError, OSError, ValueError):
        return False
    return len(idx) == n_items


def main(argv: list[str] | None = None) -> int:
    p = cli.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="champion", help="'champion' or a checkpoint directory")
    p.add_argument("--index-kind", default="flat", choices=["flat", "hnsw", "ivf"],
                   help="flat = exact (default); others record their recall@10 vs exact")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--device", default=None, help="cpu / cuda (default: the task's GPU or cpu)")
    a = p.parse_args(argv)
    cli.setup_logging(a.verbose)
    spark = build_spark("r2ec-embed-items")
    model_dir, version = registry.resolve_verified(spark, a.warehouse, a.model)
    from r2ec.checkpoint import load_settings

    tau = load_settings(model_dir).tau
    items = delta_io.read(spark, a.warehouse, ITEMS).select("item_id", "title", "attributes")
    n_items = items.count()
    folder = index_dir(a.warehouse, version)

    have = 0
    if delta_io.exists(spark, a.warehouse, ITEM_EMBEDDINGS):
        have = (delta_io.read(spark, a.warehouse, ITEM_EMBEDDINGS)
                .filter(F.col("model_version") == version)
                .join(items.select("item_id"), "item_id").count())
    if not a.force and have == n_items and _index_up_to_date(folder, version, n_items):
        print(f"item_embeddings and index for {version} are up to date ({n_items:,} items); "
              f"nothing to do", flush=True)
        return 0

    fn = embed_udf(str(model_dir.resolve()), backend=a.backend, device=a.device)
    n_parts = max(1, min(spark.sparkContext.defaultParallelism, n_items // 256 or 1))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    emb = (items.repartition(n_parts).mapInPandas(fn, EMBED_SCHEMA)
           .select(F.lit(version).alias("model_version"), "item_id", "embedding",
                   F.lit(now).cast("timestamp").alias("created_at")))
    m = delta_io.replace_partition(emb, ITEM_EMBEDDINGS, a.warehouse, "model_version", version)

    from r2ec.index import ItemIndex

    rows = (delta_io.read(spark, a.warehouse, ITEM_EMBEDDINGS)
            .filter(F.col("model_version") == version).select("item_id", "embedding")
            .join(items.select("item_id", "title"), "item_id", "left")
            .orderBy("item_id").toPandas())
    index = ItemIndex(list(rows["item_id"]), np.stack(rows["embedding"].to_numpy()).astype("float32"),
                      model_version=version, kind=a.index_kind, tau=tau,
                      titles=[t or "" for t in rows["title"]])
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    index.save(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # the index appears whole or not at all
    recall = (f", recall@{index.manifest.recall_k} vs exact {index.manifest.recall_at_k:.3f}"
              if index.manifest.recall_at_k is not None else "")
    print(f"embedded {len(rows):,} items with {version} (dim {index.manifest.dim}); "
          f"item_embeddings version {m['version']}; {a.index_kind} index at {folder}{recall}",
          flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
