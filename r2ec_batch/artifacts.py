"""Model checkpoints and item indexes by location: where they live, their local copies (on the
driver and on each executor), and building an index from a model (shared by
`jobs/embed_items.py` and `jobs/evaluate.py`).

An index for model version V lives at WAREHOUSE/_index/V/, next to the tables, so that a
warehouse on an object store carries its indexes with it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from r2ec.config import TAU
from r2ec_batch import delta_io, storage
from r2ec_batch.schemas import ITEM_EMBEDDINGS, ITEMS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A verified checkpoint: where it lives (what executors are told), the local copy this
    process uses, and its content-hash version."""

    location: str
    local: Path
    version: str


def _check_model(expect_version: str | None):
    from r2ec import checkpoint

    def check(folder: Path) -> None:
        got = checkpoint.verify(folder)["model_version"]
        if expect_version and got != expect_version:
            raise checkpoint.CheckpointError(f"{folder}: holds {got}, expected {expect_version}")
    return check


def model_version(location: str) -> str:
    """The version a checkpoint's manifest claims, read without fetching the weights and
    checked against its exact format (it names the cache folder of the copy)."""
    from r2ec import checkpoint

    try:
        version = json.loads(storage.read_text(storage.join(location, checkpoint.MANIFEST)))["model_version"]
    except FileNotFoundError as e:
        raise checkpoint.CheckpointError(f"{location}: no {checkpoint.MANIFEST}; not an R²ec "
                                         "checkpoint") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise checkpoint.CheckpointError(f"{location}: unreadable manifest ({e})") from e
    return checkpoint.check_version(version, location)


def open_model(location: str, expect_version: str | None = None) -> ModelRef:
    """Resolve, copy if remote (cache keyed by version) and verify every file's digest; with
    `expect_version` (a registered model), refuse a folder that now holds another version."""
    from r2ec import checkpoint

    location = storage.resolve(location)
    if storage.is_local(location):
        local = storage.local_path(location)
        version = checkpoint.verify(local)["model_version"]
    else:
        version = model_version(location)
        if expect_version is None or version == expect_version:
            local = storage.cached_copy(location, f"models/{version}", check=_check_model(version))
    if expect_version is not None and version != expect_version:
        raise checkpoint.CheckpointError(
            f"{location} holds {version}, but the registry's entry is {expect_version}: the "
            "folder was rewritten after registration; register (and promote) what it holds, "
            "or restore that version")
    return ModelRef(location, local, version)


def local_model(location: str, version: str) -> Path:
    """The executor side of `open_model`: a local, verified copy of that exact version."""
    from r2ec import checkpoint

    if storage.is_local(location):
        return storage.local_path(location)
    checkpoint.check_version(version, location)
    return storage.cached_copy(location, f"models/{version}", check=_check_model(version))


def index_location(warehouse: str, version: str) -> str:
    return storage.join(warehouse, "_index", version)


def local_index(location: str, version: str) -> Path:
    """A local copy of the index at `location` (cache keyed by version and the manifest's
    checksum, so a rebuilt index for the same model is fetched again)."""
    from r2ec.index import MANIFEST_FILE, IndexMismatch, ItemIndex

    if storage.is_local(location):
        return storage.local_path(location)
    try:
        manifest = json.loads(storage.read_text(storage.join(location, MANIFEST_FILE)))
    except FileNotFoundError as e:
        raise IndexMismatch(f"{location}: no index manifest; build it with jobs/embed_items.py") from e
    from r2ec import checkpoint

    checkpoint.check_version(version, location)
    checksum = manifest.get("checksum") if isinstance(manifest, dict) else None
    if not isinstance(checksum, str) or not re.fullmatch(r"[0-9a-f]{64}", checksum):
        raise IndexMismatch(f"{location}: the index manifest's checksum is not a SHA-256 "
                            "hex digest; rebuild the index with jobs/embed_items.py")
    key = f"index/{version}-{checksum[:16]}"
    return storage.cached_copy(location, key,
                               check=lambda d: ItemIndex.load(d, expect_model_version=version))


def load_index(location: str, version: str, tau: float = TAU):
    from r2ec.index import ItemIndex

    return ItemIndex.load(local_index(location, version), expect_model_version=version, tau=tau)


def usable_index(warehouse: str, model: ModelRef, hint: str) -> str:
    """The location of the model's index in the warehouse, after checking that it loads and was
    built for this model version; otherwise a job error that says to run embed_items (with
    `hint`, the flags that name the model)."""
    from r2ec.index import IndexMismatch
    from r2ec_batch.cli import JobError

    location = index_location(warehouse, model.version)
    try:
        load_index(location, model.version)
    except (IndexMismatch, FileNotFoundError) as e:
        raise JobError(f"no usable index for model {model.version} ({e}); run "
                       f"jobs/embed_items.py {hint}") from e
    return location


def index_is_current(location: str, version: str, n_items: int) -> bool:
    from r2ec.index import IndexMismatch

    try:
        return len(load_index(location, version)) == n_items
    except (IndexMismatch, FileNotFoundError, OSError, ValueError, KeyError):
        return False


_BUILT = "item_count long, dim int, recall_at_k double, recall_k int"


def _build_and_publish(batches, where: str, version: str, kind: str, tau: float):
    """mapInPandas body of the one task that builds the index: every embedding of the model,
    in item order, into an ItemIndex, saved and published to `where` (appears whole)."""
    import pandas as pd

    from r2ec.index import MANIFEST_FILE, ItemIndex

    rows = pd.concat(list(batches), ignore_index=True).sort_values("item_id", kind="stable")
    index = ItemIndex(list(rows["item_id"]), np.stack(rows["embedding"].to_numpy()).astype("float32"),
                      model_version=version, kind=kind, tau=tau,
                      titles=[t or "" for t in rows["title"]])
    staged = Path(tempfile.mkdtemp(prefix="r2ec-index-"))
    try:
        index.save(staged)
        storage.publish_dir(staged, where, last=MANIFEST_FILE)  # appears whole or not at all
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    m = index.manifest
    yield pd.DataFrame([{"item_count": m.item_count, "dim": m.dim, "recall_at_k": m.recall_at_k,
                         "recall_k": m.recall_k}])


def build_index(spark: SparkSession, warehouse: str, model: ModelRef, kind: str = "flat",
                force: bool = False, backend: str = "transformers", device: str | None = None) -> str:
    """Embed every item of `items` with `model` into `item_embeddings` (partition model_version)
    and publish its FAISS index; skipped when both already hold every current item. Returns a
    one-line summary of what happened."""
    from r2ec.checkpoint import load_settings
    from r2ec_batch.udfs.scoring import EMBED_SCHEMA, embed_udf

    version = model.version
    items = delta_io.read(spark, warehouse, ITEMS).select("item_id", "title", "attributes")
    n_items = items.count()
    where = index_location(warehouse, version)
    have = 0
    if delta_io.exists(spark, warehouse, ITEM_EMBEDDINGS):
        have = (delta_io.read(spark, warehouse, ITEM_EMBEDDINGS)
                .filter(F.col("model_version") == version)
                .join(items.select("item_id"), "item_id").count())
    if not force and have == n_items and index_is_current(where, version, n_items):
        return f"item_embeddings and index for {version} are up to date ({n_items:,} items); nothing to do"

    fn = embed_udf(model.location, model_version=version, backend=backend, device=device)
    n_parts = max(1, min(spark.sparkContext.defaultParallelism, n_items // 256 or 1))
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    emb = (items.repartition(n_parts).mapInPandas(fn, EMBED_SCHEMA)
           .select(F.lit(version).alias("model_version"), "item_id", "embedding",
                   F.lit(now).cast("timestamp").alias("created_at")))
    m = delta_io.replace_partition(emb, ITEM_EMBEDDINGS, warehouse, "model_version", version)

    built = publish_index(spark, warehouse, version, kind, load_settings(model.local).tau, items)
    recall = (f", recall@{built['recall_k']} vs exact {built['recall_at_k']:.3f}"
              if built["recall_at_k"] is not None and built["recall_at_k"] == built["recall_at_k"]
              else "")
    return (f"embedded {built['item_count']:,} items with {version} (dim {built['dim']}); "
            f"item_embeddings version {m['version']}; {kind} index at {where}{recall}")


def publish_index(spark: SparkSession, warehouse: str, version: str, kind: str, tau: float,
                  items=None) -> dict:
    """Build the FAISS index of `version`'s rows of `item_embeddings` and publish it to
    `index_location` in one Spark task, not on the driver: the whole partition (1M items x
    2,304 dims is ~9 GB) never passes through the driver, whose memory then does not grow
    with the catalogue. Returns the index's item count, dimension and recall."""
    if items is None:
        items = delta_io.read(spark, warehouse, ITEMS)
    rows = (delta_io.read(spark, warehouse, ITEM_EMBEDDINGS)
            .filter(F.col("model_version") == version).select("item_id", "embedding")
            .join(items.select("item_id", "title"), "item_id", "left").coalesce(1))
    build = functools.partial(_build_and_publish, where=index_location(warehouse, version),
                              version=version, kind=kind, tau=tau)
    return rows.mapInPandas(build, _BUILT).first().asDict()
