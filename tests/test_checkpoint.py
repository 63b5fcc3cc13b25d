"""Checkpoints: bit-exact round trip, stable versions, corrupted files refused."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from r2ec import checkpoint
from r2ec.checkpoint import CheckpointError


def test_round_trip_is_bit_exact(tiny_model_dir, tmp_path):
    model, tok, prompt, manifest = checkpoint.load(tiny_model_dir)
    again = checkpoint.save(model, tok, tmp_path / "copy", prompt, base_model="test",
                            extra={"stage": "build"})
    assert again["model_version"] == manifest["model_version"], "same content, same version"
    a = load_file(tiny_model_dir / "model.safetensors")
    b = load_file(tmp_path / "copy" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m2, *_ = checkpoint.load(tmp_path / "copy")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), m2.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)


def test_changed_weights_change_version(tiny_model_dir, tmp_path):
    model, tok, prompt, manifest = checkpoint.load(tiny_model_dir)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    other = checkpoint.save(model, tok, tmp_path / "other", prompt, base_model="test")
    assert other["model_version"] != manifest["model_version"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest"])
def test_damaged_checkpoint_is_refused(tiny_model_dir, tmp_path, damage):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, d)
    weights = d / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip":
        raw = bytearray(weights.read_bytes())
        raw[-100] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif damage == "delete":
        weights.unlink()
    else:
        (d / "manifest.json").unlink()
    expected = {"truncate": "model.safetensors is corrupted or truncated",
                "flip": "model.safetensors is corrupted or truncated",
                "delete": "model.safetensors is missing", "no_manifest": "not an R²ec checkpoint"}
    with pytest.raises(CheckpointError, match=expected[damage]):
        checkpoint.load(d)


def test_files_are_world_readable(tiny_model_dir):
    for p in tiny_model_dir.iterdir():
        assert p.stat().st_mode & 0o044 == 0o044, p.name


def test_tau_and_prompt_settings_travel_with_the_checkpoint(tiny_model_dir, tmp_path):
    from dataclasses import replace

    from r2ec.model import R2ec

    model, tok, settings, _ = checkpoint.load(tiny_model_dir)
    other = replace(settings, tau=0.05, prompt=replace(settings.prompt, window=7))
    checkpoint.save(model, tok, tmp_path / "t", other, base_model="test")
    m = R2ec.load(tmp_path / "t", device="cpu")
    assert m.tau == 0.05 and m.prompt_cfg.window == 7
    m.save(tmp_path / "again", stage="test")
    assert checkpoint.load(tmp_path / "again")[2] == other


def test_older_prompt_format_is_refused(tiny_model_dir, tmp_path):
    import json

    d = tmp_path / "old"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / checkpoint.R2EC_CONFIG).read_text())
    del cfg["prompt_format"]  # what a checkpoint from before gap-based prompts holds
    (d / checkpoint.R2EC_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="prompt format 1"):
        checkpoint.load(d, check=False)


def test_files_outside_the_manifest_are_refused(tiny_model_dir, tmp_path):
    """What loading would read unchecked: an added file (transformers reads added_tokens.json,
    peft an adapter/), and manifest names that point outside the folder."""
    import json

    d = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, d)
    (d / "added_tokens.json").write_text('{"<evil>": 5}')
    with pytest.raises(CheckpointError, match=r"not covered by the manifest: \['added_tokens.json'\]"):
        checkpoint.load(d)
    (d / "added_tokens.json").unlink()
    (d / "adapter").mkdir()
    (d / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="adapter/adapter_config.json"):
        checkpoint.verify(d)
    shutil.rmtree(d / "adapter")

    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    manifest = json.loads((d / "manifest.json").read_text())
    for name in ("../secret.txt", str(secret), "sub/../../secret.txt"):
        bad = dict(manifest, files={**manifest["files"], name: checkpoint.sha256_file(secret)})
        (d / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match="is not a file inside the checkpoint"):
            checkpoint.verify(d)
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert checkpoint.verify(d)["model_version"] == manifest["model_version"]


def test_model_versions_have_one_exact_form():
    assert checkpoint.check_version("r2ec-0123456789ab") == "r2ec-0123456789ab"
    for bad in ("../../victim", "/../../../../", "r2ec-0123456789aB", "r2ec-0123456789abc", 5, None):
        with pytest.raises(CheckpointError, match="is not a model version"):
            checkpoint.check_version(bad)
