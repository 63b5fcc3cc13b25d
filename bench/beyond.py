"""Beyond-accuracy figures (coverage, popularity, novelty, diversity; `r2ec.beyond`) of the
ranked lists a quality benchmark run stored, without re-running it.

    .venv/bin/python bench/beyond.py --rankings artifacts/quality/rankings --warehouse warehouse

Reads OUT/rankings of `bench/quality.py` (method, sample_id, rank, item_id) and, from the
warehouse, `items` (tags) and `training_samples` (train-split popularity, each test sample's
history). Prints one markdown row per method at --k. `bench/quality.py` prints the same table
for the run it makes.
"""

from __future__ import annotations

import argparse

from deltalake import DeltaTable

from r2ec.beyond import beyond_markdown
from r2ec.data import Catalog
from r2ec.reasoning import item_tags


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rankings", default="artifacts/quality/rankings")
    p.add_argument("--warehouse", default="warehouse")
    p.add_argument("--k", type=int, default=10)
    a = p.parse_args()
    ranks = DeltaTable(a.rankings).to_pandas().sort_values(["method", "sample_id", "rank"])
    catalog = Catalog.from_frame(DeltaTable(f"{a.warehouse}/items").to_pandas())
    samples = DeltaTable(f"{a.warehouse}/training_samples").to_pandas().set_index("sample_id")
    counts = samples[samples["split"] == "train"]["target_item_id"].value_counts().to_dict()
    tags = {i: item_tags(x) for i, x in zip(catalog.ids, catalog.attributes, strict=True)}
    lists, histories = {}, None
    for method, g in ranks.groupby("method", sort=False):
        per = g.groupby("sample_id", sort=True)["item_id"].apply(list)
        lists[method] = list(per)
        hist = [list(samples.at[sid, "history_item_ids"]) for sid in per.index]
        if histories is not None and hist != histories:
            raise SystemExit(f"{method}: ranked other samples than the methods before it")
        histories = hist
    _, md = beyond_markdown(lists, histories or [], counts, catalog.ids, tags, a.k)
    print(f"{len(histories or [])} samples per method, catalogue {len(catalog)}, popularity from "
          f"{sum(counts.values())} train targets\n")
    print(md)


if __name__ == "__main__":
    main()
