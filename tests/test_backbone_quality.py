"""The GPU benchmark's CPU path (`bench/backbone_quality.py --device cpu --tiny`), as a bare GPU
machine would run it (Spark, Delta, FAISS and the batch library made unimportable): the
weights re-assembled from their two checked parts (the whole file is not where the script
looks first), every row, curve, probe and report written; a corrupt part stops it before any
work; the `gguf` wheel that travels with the parts imports from its zip."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from r2ec.weights import SMOLLM2, split
from tests.conftest import REPO

pytestmark = pytest.mark.slow
SCRIPT = REPO / "bench" / "backbone_quality.py"


@pytest.fixture(scope="module")
def parts(smollm2_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    split(SMOLLM2, smollm2_gguf, folder)
    return folder


# What a bare GPU machine lacks: the script must not import any of it.
BARE = ("faiss", "pyspark", "delta", "deltalake", "airflow", "r2ec_batch")
LAUNCH = ("import runpy, sys\n"
          f"for m in {BARE!r}:\n    sys.modules[m] = None  # importing it raises ImportError\n"
          f"sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]\n"
          f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCH, "--device", "cpu", "--tiny", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def test_tiny_run_writes_the_whole_report(parts, tmp_path):
    out = tmp_path / "out"
    proc = _run("--gguf", str(tmp_path / "not-here.gguf"), "--parts", str(parts), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "backbone_quality.json").read_text())
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["SASRec", "R²ec-SmolLM2 w/o reasoning", "R²ec-SmolLM2 (RecPO)"]
    for r in report["rows"]:
        assert set(r) >= {"hit@10", "ndcg@10", "wall_s", "note"}
    deltas = {r["method"]: r["delta_ndcg@10"] for r in report["rows"]}
    assert deltas["R²ec-SmolLM2 (RecPO)"] is None and deltas["SASRec"] is not None
    # curves of every trained method, the R²ec ones starting at the untrained model (minute 0)
    assert set(report["curves"]) == set(methods)
    for m in methods[1:]:
        assert report["curves"][m][0]["minutes"] == 0.0 and len(report["curves"][m]) >= 3
    rl = report["curves"]["R²ec-SmolLM2 (RecPO)"]
    assert [c["minutes"] for c in rl] == sorted(c["minutes"] for c in rl)  # RecPO after its start
    assert [p["setting"] for p in report["spread_probe"]][0] == "as configured"
    assert len(report["spread_probe"]) == 3
    assert all(0 <= p["flat_groups"] <= 1 and p["rollouts_per_informative_group"] >= 2
               for p in report["spread_probe"])
    steps = report["recpo_steps"]
    assert steps["steps"] == 1 and steps["rollouts_per_group"] >= 2
    assert set(report["targets"]) == {"recpo_vs_1.10x_no_reasoning", "recpo_vs_sasrec"}
    examples = report["rationales"]["R²ec-SmolLM2 (RecPO)"]["examples"]
    assert len(examples) == 3 and all(len(e["top5"]) == 5 for e in examples)
    md = (out / "backbone_quality.md").read_text()
    assert "| R²ec-SmolLM2 (RecPO) |" in md and "Reward-spread probe" in md
    assert (out / "valid_curves.png").stat().st_size > 10_000
    assert not (out / "work").exists()  # checkpoints of the run are not left behind
    assert report["env"]["tiny"] and "(35.4M parameters)" in proc.stdout  # 2 of 30 layers


def test_the_gguf_wheel_imports_from_the_zip():
    """A machine without the `gguf` package gets it from the wheel `make smollm2-parts` puts
    beside the parts (make test does it): a pure-Python wheel on sys.path imports as it is."""
    wheels = sorted((REPO / "data" / "llm" / "parts").glob("gguf-*.whl"))
    if not wheels:
        pytest.fail("no gguf wheel in data/llm/parts: run `make smollm2-parts` (make test does it)")
    wheel = wheels[-1]
    code = (f"import sys; sys.path.insert(0, {str(wheel)!r}); import gguf; "
            f"assert gguf.__file__.startswith({str(wheel)!r}), gguf.__file__; "
            "print(gguf.GGUFReader.__name__)")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert got.returncode == 0 and got.stdout.strip() == "GGUFReader", got.stderr


def test_a_corrupt_part_stops_the_run_with_its_name(parts, tmp_path):
    bad = tmp_path / "parts"
    bad.mkdir()
    for p in parts.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    second = bad / SMOLLM2.part_name(1)
    data = bytearray(second.read_bytes())
    data[-1] ^= 0x01
    second.write_bytes(bytes(data))
    proc = _run("--gguf", str(tmp_path / "absent.gguf"), "--parts", str(bad), "--out",
                str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "part 2 of 2" in proc.stderr and "corrupt" in proc.stderr
    assert not (tmp_path / "out" / "backbone_quality.json").exists()


def test_decode_speed_cpu_path_runs_every_sequence_to_the_budget(tmp_path):
    """bench/decode_speed.py sizes the GPU run's batches: each row must have decoded the whole
    budget (a sequence that stopped early would make a step look cheaper than it is)."""
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "decode_speed.py"), "--device",
                           "cpu", "--layers", "1", "--prompt-tokens", "8", "--new-tokens", "5",
                           "--batches", "2,3", "--caches", "dynamic", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["new_tokens"]) for r in rows] == [(2, 5), (3, 5)]
    assert all(r["seconds"] > 0 and r["tokens_per_s"] > 0 for r in rows)
