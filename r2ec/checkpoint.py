"""Checkpoints: a Hugging Face model directory (config, safetensors, tokenizer) plus the
R²ec prompt config and a manifest. Never pickle: weights are safetensors only.

    python -m r2ec.checkpoint adopt /models/gemma-2-2b-it models/gemma --dataset CDs_and_Vinyl
    python -m r2ec.checkpoint verify models/default

manifest.json holds `model_version` = "r2ec-" + the first 12 hex digits of a SHA-256 over the
content of every other file, so the same weights always get the same version and any changed
byte gives another. Loading checks every file against its recorded digest first: a corrupted or
truncated checkpoint is refused with an error naming the file, never loaded silently.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from r2ec.config import PromptConfig, from_dict
from r2ec.prompts import PROMPT_FORMAT

MANIFEST = "manifest.json"
R2EC_CONFIG = "r2ec_config.json"
ADAPTER_DIR = "adapter"  # LoRA-trained checkpoints: the adapter, beside the merged weights
FORMAT = "r2ec-checkpoint/1"


@dataclass(frozen=True)
class R2ecSettings:
    """What a model only works with and so travels inside its checkpoint (r2ec_config.json):
    the prompt settings (history window, category words, ...), the prompt format version, and
    tau, the temperature of the recommendation head (score = cosine / tau)."""

    prompt: PromptConfig
    tau: float = 0.02  # the authors' code; the paper writes a plain inner product
    prompt_format: int = PROMPT_FORMAT

    def to_json(self) -> str:
        return json.dumps({"prompt": asdict(self.prompt), "tau": self.tau,
                           "prompt_format": self.prompt_format}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> R2ecSettings:
        data = json.loads(text)
        fmt = data.get("prompt_format", 1)
        if fmt != PROMPT_FORMAT:
            raise CheckpointError(
                f"{where}: the model was trained on prompt format {fmt} (this version writes "
                f"format {PROMPT_FORMAT}: gaps between events instead of ages before the target); "
                "train it again (the default model: rm -rf models/default && make model; others: "
                "jobs/train_recpo.py) or adopt the backbone again")
        return cls(from_dict(PromptConfig, data["prompt"]), float(data["tau"]), fmt)


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupted, or not one of ours."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _version(digests: dict[str, str]) -> str:
    joined = "\n".join(f"{name}:{digest}" for name, digest in sorted(digests.items()))
    return "r2ec-" + hashlib.sha256(joined.encode()).hexdigest()[:12]


def write_manifest(folder: Path, extra: dict[str, Any]) -> dict[str, Any]:
    digests = {str(p.relative_to(folder)): _sha256(p) for p in _content_files(folder)}
    tok_files = {k: v for k, v in digests.items() if k.startswith(("tokenizer", "special_tokens"))}
    manifest = {
        "format": FORMAT,
        "model_version": _version(digests),
        "tokenizer_hash": _version(tok_files).replace("r2ec-", "tok-"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": digests,
        **extra,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def save(model, tokenizer, out_dir: str | Path, settings: R2ecSettings,
         base_model: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write model + tokenizer + R²ec settings + manifest atomically: into a temporary sibling
    folder, then renamed over `out_dir`. A LoRA-wrapped model is merged first."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if hasattr(model, "merge_and_unload"):  # peft
            # The adapter alone (a few MB) in ADAPTER_DIR, for sharing and for re-applying to
            # the parent checkpoint it was trained on (`parent_version` in the manifest); the
            # embeddings are the parent's already, so they are not repeated. The model itself
            # is stored merged, so that anything (vLLM included) loads it as a plain model.
            model.save_pretrained(tmp / ADAPTER_DIR, save_embedding_layers=False)
            # Merge a copy: merging in place would end LoRA training of the live model.
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / R2EC_CONFIG).write_text(settings.to_json())
        for p in tmp.rglob("*"):
            # transformers writes 0600 files; Spark/Airflow workers may run as other users.
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        manifest = write_manifest(tmp, {"base_model": base_model, **(extra or {})})
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def verify(folder: str | Path) -> dict[str, Any]:
    """The manifest, after checking that every recorded file exists and matches its digest."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST}; not an R²ec checkpoint "
                              f"(adopt a plain Hugging Face model with `python -m r2ec.checkpoint adopt`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from e
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {manifest.get('format')!r}")
    for name, digest in manifest["files"].items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"{folder}: file {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{folder}: file {name} is corrupted or truncated "
                                  f"(SHA-256 differs from the manifest)")
    if _version(manifest["files"]) != manifest["model_version"]:
        raise CheckpointError(f"{path}: model_version does not match the recorded files")
    return manifest


def load_settings(folder: str | Path) -> R2ecSettings:
    """The R²ec settings of a checkpoint (prompt settings, tau), without loading the model."""
    folder = Path(folder)
    return R2ecSettings.from_json((folder / R2EC_CONFIG).read_text(), str(folder))


def load(folder: str | Path, device=None, dtype=None, check: bool = True):
    """(model, tokenizer, R2ecSettings, manifest) from a checkpoint directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    manifest = verify(folder) if check else json.loads((folder / MANIFEST).read_text())
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype or "auto")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: cannot be loaded ({e})") from e
    settings = load_settings(folder)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer, settings, manifest


def adopt(src: str | Path, dst: str | Path, prompt: PromptConfig) -> dict[str, Any]:
    """Make an R²ec checkpoint of any local Hugging Face causal-LM directory (copy + manifest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    added = [t for t in ("<answer>", "</answer>") if t not in tokenizer.get_vocab()]
    if added:
        # extend, never replace: Gemma's and Qwen's additional special tokens stay special
        tokenizer.add_special_tokens({"additional_special_tokens": added},
                                     replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        # Llama 3 ships without one. Batches are padded (left for generation, right for states)
        # and padding is masked out, but a generated pad also ends a reasoning, so it must be a
        # token of its own, not eos or a word.
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return save(model, tokenizer, dst, R2ecSettings(prompt), base_model=str(src),
                extra={"stage": "adopted"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="R²ec checkpoint tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("adopt", help="make a checkpoint of a local Hugging Face model directory")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--dataset", default="ml-100k", help="prompt preset (category words)")
    v = sub.add_parser("verify", help="check a checkpoint's files against its manifest")
    v.add_argument("dir")
    args = p.parse_args(argv)
    if args.cmd == "adopt":
        m = adopt(args.src, args.dst, PromptConfig.for_dataset(args.dataset))
    else:
        m = verify(args.dir)
    print(json.dumps({k: m[k] for k in ("model_version", "base_model", "tokenizer_hash")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
