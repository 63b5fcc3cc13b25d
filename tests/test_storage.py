"""Locations: plain paths and URIs, publishing a folder, and the executor-side cache (fsspec's
in-memory filesystem stands in for an object store; the S3 server runs in test_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2ec_batch import storage


def test_paths_and_uris_resolve_the_way_users_mean_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("wh") == str(tmp_path / "wh")
    assert storage.resolve(f"file://{tmp_path}/wh") == str(tmp_path / "wh")
    assert storage.resolve("s3a://bucket/wh/") == "s3a://bucket/wh"
    assert storage.join("s3a://bucket/wh", "items") == "s3a://bucket/wh/items"
    assert storage.join("wh", "_index", "v1") == str(tmp_path / "wh" / "_index" / "v1")
    assert storage.is_local("wh") and not storage.is_local("abfss://c@acct.dfs.core.windows.net/wh")
    assert storage.basename("s3a://bucket/raw/u.data") == "u.data"


def _folder(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_publish_replaces_a_local_folder_whole(tmp_path):
    dest = _folder(tmp_path / "dest", {"old.txt": "old", "manifest.json": "{}"})
    src = _folder(tmp_path / "src", {"a.txt": "a", "sub/b.txt": "b", "manifest.json": "{}"})
    storage.publish_dir(src, str(dest), last="manifest.json")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == \
        ["a.txt", "manifest.json", "sub/b.txt"]
    assert not list(tmp_path.glob(".dest.*"))


def test_remote_folder_round_trip_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("R2EC_CACHE_DIR", str(tmp_path / "cache"))
    src = _folder(tmp_path / "src", {"w.bin": "weights", "manifest.json": json.dumps({"v": 1})})
    uri = "memory://store/models/m1"
    storage.publish_dir(src, uri, last="manifest.json")
    assert storage.exists(uri + "/manifest.json") and storage.size(uri + "/w.bin") == 7
    assert storage.glob("memory://store/models/m1", "*.bin") == ["memory://store/models/m1/w.bin"]

    checks = []
    local = storage.cached_copy(uri, "models/m1", check=lambda d: checks.append(d))
    assert local == tmp_path / "cache" / "models" / "m1" and (local / "w.bin").read_text() == "weights"
    # a second task on this machine reuses the copy (checked again, not fetched again)
    fs, path = storage.filesystem(uri)
    fs.pipe(f"{path}/w.bin", b"changed")
    assert storage.cached_copy(uri, "models/m1", check=lambda d: checks.append(d)) == local
    assert (local / "w.bin").read_text() == "weights" and len(checks) == 2

    # a cached copy that fails its check is fetched again once
    def only_fresh(d: Path) -> None:
        if (d / "w.bin").read_text() != "changed":
            raise ValueError("stale")
    assert (storage.cached_copy(uri, "models/m1", check=only_fresh) / "w.bin").read_text() == "changed"

    # a fresh copy that fails its check is refused, and nothing is left in the cache
    def never(d: Path) -> None:
        raise ValueError("corrupted")
    with pytest.raises(ValueError, match="corrupted"):
        storage.cached_copy(uri, "models/other", check=never)
    assert not (tmp_path / "cache" / "models" / "other").exists()
    with pytest.raises(FileNotFoundError):
        storage.cached_copy("memory://store/none", "models/none")


def test_output_dir_uploads_when_the_block_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("R2EC_CACHE_DIR", str(tmp_path / "cache"))
    with storage.output_dir("memory://store/out/a") as out:
        (out / "f.txt").write_text("x")
    assert storage.read_text("memory://store/out/a/f.txt") == "x"
    with pytest.raises(RuntimeError), storage.output_dir("memory://store/out/b") as out:
        (out / "f.txt").write_text("x")
        raise RuntimeError("training failed")
    assert not storage.exists("memory://store/out/b")
    assert not list((tmp_path / "cache" / "work").iterdir())  # staging removed either way


def test_crafted_cache_keys_never_reach_outside_the_cache(tmp_path, monkeypatch):
    """A remote manifest's model_version or an index manifest's checksum named the cache folder
    that a failed check deleted: '../../victim' removed a sibling folder, and '/../../../../'
    (16 characters of a checksum) the home folder. Both forms are refused now, before any
    folder is touched, and a valid key still works."""
    from r2ec.checkpoint import CheckpointError
    from r2ec.index import IndexMismatch
    from r2ec_batch import artifacts

    home = tmp_path / "home"
    cache = home / ".cache" / "r2ec"
    victim = _folder(tmp_path / "victim", {"keep.txt": "mine"})
    precious = _folder(home, {"notes.txt": "mine"})
    monkeypatch.setenv("R2EC_CACHE_DIR", str(cache))
    # the control: the old key arithmetic lands outside the cache
    assert (cache / "models" / "../../../../victim").resolve() == victim.resolve()

    for key in ("models/../../../../victim", "index//../../../../", "/etc", "models", "a/b/c"):
        with pytest.raises(ValueError, match="refusing cache key"):
            storage.cached_copy("memory://store/any", key, check=lambda d: 1 / 0)

    fs, _ = storage.filesystem("memory://store")
    fs.pipe("/store/evil/manifest.json", json.dumps({"model_version": "../../../../victim"}).encode())
    fs.pipe("/store/evil/model.safetensors", b"x")
    with pytest.raises(CheckpointError, match="is not a model version"):
        artifacts.open_model("memory://store/evil")
    with pytest.raises(CheckpointError, match="is not a model version"):
        artifacts.local_model("memory://store/evil", "../../../../victim")
    fs.pipe("/store/idx/index_manifest.json", json.dumps({"checksum": "/../../../../" + "0" * 52}).encode())
    with pytest.raises(IndexMismatch, match="not a SHA-256"):
        artifacts.local_index("memory://store/idx", "r2ec-0123456789ab")

    assert (victim / "keep.txt").read_text() == "mine" and (precious / "notes.txt").read_text() == "mine"
    good = storage.cached_copy("memory://store/evil", "models/r2ec-0123456789ab")
    assert good.parent == (cache / "models").resolve() and (good / "model.safetensors").is_file()
