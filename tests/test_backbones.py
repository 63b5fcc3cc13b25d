"""The production backbone families end to end, without a hub: a tiny random Gemma-2, Llama 3
and Qwen2.5 model each goes through `python -m r2ec.checkpoint adopt` -> LoRA warm start ->
LoRA RecPO -> embed_items -> score -> evaluate on a slice of ML-100k, through the same jobs a
user runs. The LoRA stages keep their adapters beside the merged weights, and the adapter
applied to the parent checkpoint gives the merged model's states."""

from __future__ import annotations

import json

import pytest
import torch
from deltalake import DeltaTable

from tests.backbones import save_tiny_backbone
from tests.conftest import write_ml100k_slice

pytestmark = [pytest.mark.spark, pytest.mark.slow]
USERS = 40
AS_OF = "1998-04-22"


@pytest.fixture(scope="module")
def slice_wh(spark, ml100k_dir, tmp_path_factory):
    """40 ML-100k users with histories and paper-protocol samples; the whole catalogue."""
    from r2ec_batch.jobs import build_histories, ingest

    data = write_ml100k_slice(ml100k_dir, tmp_path_factory.mktemp("bb_slice"), USERS)
    wh = tmp_path_factory.mktemp("bb_wh")
    assert ingest.main(["--source", "ml-100k", "--path", str(data), "--warehouse", str(wh)]) == 0
    assert build_histories.main(["--as-of", AS_OF, "--warehouse", str(wh)]) == 0
    titles = DeltaTable(str(wh / "items")).to_pandas()["title"].tolist()
    corpus = titles + [f"{t} ({r}) {n} days later, same day, weeks, months, now; movies I watched"
                       for t in titles[:300] for r in (3, 5) for n in (1, 2)]
    return wh, corpus


def _states(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]


@pytest.mark.parametrize("family", ["gemma2", "llama", "qwen2"])
def test_backbone_adopt_lora_train_embed_score_evaluate(family, slice_wh, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from r2ec import checkpoint
    from r2ec_batch.jobs import embed_items, evaluate, score
    from r2ec_batch.jobs import train as train_job

    wh, corpus = slice_wh
    hf = save_tiny_backbone(family, tmp_path / "hf", corpus)
    adopted = tmp_path / "adopted"
    assert checkpoint.main(["adopt", str(hf), str(adopted), "--dataset", "ml-100k"]) == 0
    common = ["--train-limit", "200", "--valid-limit", "8", "--register", "candidate", "--device", "cpu",
              "--warehouse", str(wh)]
    assert train_job.main(["--stage", "warmstart", "--model", str(adopted),
                             "--out", str(tmp_path / "ws"), "--ws-lora-enabled", "true",
                             "--ws-max-steps", "2", "--ws-windows-per-step", "4", "--ws-item-sample",
                             "64", "--ws-warmup-steps", "1", "--ws-eval-every", "1000",
                             *common]) == 0
    ws = tmp_path / "ws" / "best"
    assert train_job.main(["--stage", "recpo", "--model", str(ws), "--out", str(tmp_path / "rl"),
                             "--rl-lora-enabled", "true", "--rl-max-steps", "1",
                             "--rl-users-per-step", "2", "--rl-group-size", "2",
                             "--rl-max-new-tokens", "4", "--rl-warmup-steps", "1",
                             "--rl-eval-every", "1000", *common]) == 0
    rl = tmp_path / "rl" / "best"

    # adapters saved as adapters, on top of the checkpoint each stage started from
    for parent, child in ((adopted, ws), (ws, rl)):
        manifest = checkpoint.verify(child)
        assert manifest["parent_version"] == checkpoint.verify(parent)["model_version"]
        assert json.loads((child / "adapter" / "adapter_config.json").read_text())["r"] == 4
        assert not (child / "adapter_config.json").exists()  # the merged model loads as plain
    ids = list(range(5, 25))
    merged = AutoModelForCausalLM.from_pretrained(rl, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(ws, dtype=torch.float32), rl / "adapter")
    assert torch.allclose(_states(merged, ids), _states(with_adapter, ids), atol=1e-4)

    # served merged, through the product's jobs, as a variant of its own
    wh_args = ["--warehouse", str(wh)]
    assert embed_items.main(["--model", str(rl), *wh_args]) == 0
    assert score.main(["--model", str(rl), "--variant", family, "--run-date", AS_OF, "--as-of",
                       AS_OF, "--top-k", "5", "--max-new-tokens", "4", "--publish", *wh_args]) == 0
    assert evaluate.main(["--model", str(rl), "--split", "test", "--limit", "8",
                          "--max-new-tokens", "4", *wh_args]) == 0
    version = checkpoint.verify(rl)["model_version"]
    recs = DeltaTable(str(wh / "recommendations")).to_pandas()
    mine = recs[(recs["variant"] == family) & (recs["model_version"] == version)]
    assert mine["user_id"].nunique() == USERS and len(mine) == USERS * 5
    ev = DeltaTable(str(wh / "evaluations")).to_pandas()
    got = ev[(ev["model_version"] == version) & (ev["metric"] == "ndcg")]
    assert set(got["k"]) == {5, 10, 20} and (got["n_samples"] == 8).all()
