"""Checkpoints: a Hugging Face model directory (config, safetensors, tokenizer) plus the
R²ec prompt config and a manifest. Never pickle: weights are safetensors only.

    python -m r2ec.checkpoint adopt /models/gemma-2-2b-it models/gemma --dataset CDs_and_Vinyl
    python -m r2ec.checkpoint adopt --gguf data/llm/SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2
    python -m r2ec.checkpoint verify models/default

manifest.json holds `model_version` = "r2ec-" + the first 12 hex digits of a SHA-256 over the
content of every other file, so the same weights always get the same version and any changed
byte gives another. Loading checks every file against its recorded digest first: a corrupted or
truncated checkpoint is refused with an error naming the file, never loaded silently.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from r2ec.config import TAU, PromptConfig, from_dict
from r2ec.files import replace_dir, sha256_file
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
    tau: float = TAU
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
                "jobs/train.py) or adopt the backbone again")
        return cls(from_dict(PromptConfig, data["prompt"]), float(data["tau"]), fmt)


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupted, or not one of ours."""


VERSION = re.compile(r"^r2ec-[0-9a-f]{12}$")


def check_version(version: object, where: object = "") -> str:
    """`version` if it has the exact form of a model_version ("r2ec-" + 12 hex digits): it names
    cache folders and registry rows, so nothing else may pass."""
    if not isinstance(version, str) or not VERSION.match(version):
        raise CheckpointError(f"{where}: {str(version)[:80]!r} is not a model version "
                              "('r2ec-' and 12 hex digits)")
    return version


def _content_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _version(digests: dict[str, str]) -> str:
    joined = "\n".join(f"{name}:{digest}" for name, digest in sorted(digests.items()))
    return "r2ec-" + hashlib.sha256(joined.encode()).hexdigest()[:12]


def write_manifest(folder: Path, extra: dict[str, Any]) -> dict[str, Any]:
    digests = {str(p.relative_to(folder)): sha256_file(p) for p in _content_files(folder)}
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
        replace_dir(tmp, out)
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
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: the manifest lists no files")
    root = folder.resolve()
    for name, digest in files.items():
        # names are relative paths inside the folder: no absolute path, no '..', no link out
        f = (folder / name).resolve() if isinstance(name, str) else None
        if f is None or name.startswith("/") or "\\" in name or ".." in Path(name).parts \
                or root not in f.parents:
            raise CheckpointError(f"{folder}: manifest entry {str(name)[:80]!r} is not a file "
                                  "inside the checkpoint")
        if not f.is_file():
            raise CheckpointError(f"{folder}: file {name} is missing")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{folder}: file {name} is corrupted or truncated "
                                  f"(SHA-256 differs from the manifest)")
    # Loading reads what is in the folder (an adapter/, added_tokens.json, ...), so a file the
    # manifest does not cover is refused rather than loaded unchecked.
    extra = sorted(str(p.relative_to(folder)) for p in _content_files(folder)
                   if str(p.relative_to(folder)) not in files)
    if extra:
        raise CheckpointError(f"{folder}: files not covered by the manifest: {extra[:5]}; "
                              "remove them, or save the checkpoint again")
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


@contextlib.contextmanager
def _gguf_read_once():
    """Within one GGUF load, each file's header is parsed once and gguf's tensor-name table built
    once per architecture. transformers parses the header three times (tokenizer, config,
    weights; ~4 s each for SmolLM2's 49k-token vocabulary on 2 cores) and rebuilds the name
    table for every module of the model (~400 times, ~6 s): 27 s -> ~14 s for SmolLM2-135M,
    measured. Both objects are only read once built. transformers imports them from `gguf` at
    each call, so replacing the module's attributes for the duration is enough."""
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def reader(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def _load_gguf(path: Path):
    """(tokenizer, float32 model) from a GGUF file: transformers reads the file's tokenizer,
    chat template and weights, de-quantising every tensor to float32 (exact: GGUF's blocks
    are scale * q + min in float16). The model is rebuilt from its config without the
    `quantization_config` that transformers leaves on a GGUF model, which would make it
    refuse to save; the weights are the same tensors."""
    import copy as _copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError as e:
        raise CheckpointError("reading GGUF files needs the `gguf` package "
                              "(pip install -c constraints.txt gguf; `make smollm2` has it)") from e
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name,
                                                  local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                      local_files_only=True, dtype="float32")
    config = _copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    return tokenizer, model


def load_backbone(src: str | Path, gguf: bool = False) -> tuple[Any, Any, str, dict[str, Any]]:
    """(model, tokenizer, base model name, provenance) of a local Hugging Face causal-LM
    directory, or of a GGUF file (`gguf=True`) whose manifest entries record the file's SHA-256
    and, where it is a registry file this project knows (`r2ec.weights`), its package,
    licence and description."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2ec.weights import KNOWN

    src = Path(src)
    if not gguf:
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True)
        return model, tokenizer, str(src), {}
    tokenizer, model = _load_gguf(src)
    digest = sha256_file(src)
    known = next((w for w in KNOWN.values() if w.sha256 == digest), None)
    if known:
        return model, tokenizer, known.description.split(" (")[0], known.provenance()
    return model, tokenizer, src.name, {"source_file": src.name, "source_sha256": digest,
                                        "source_size": src.stat().st_size}


def prepare_backbone(model, tokenizer):
    """A backbone made ready for R²ec, in place: `<answer>` / `</answer>` as added special
    tokens, a pad token where there is none, the embeddings grown to the tokenizer."""
    added = [t for t in ("<answer>", "</answer>") if t not in tokenizer.get_vocab()]
    if added:
        # extend, never replace: Gemma's and Qwen's additional special tokens stay special
        tokenizer.add_special_tokens({"additional_special_tokens": added},
                                     replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        # Llama 3 ships without one. Batches are padded (left for generation, right for states)
        # and padding is masked out, but a generated pad also ends a reasoning, so it must be a
        # token of its own, not eos or a word. (SmolLM2's pad is its end of turn, which ends a
        # reasoning anyway, so it is kept.)
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        import torch

        # New rows are drawn around the old rows' mean (transformers' default); seeded, so that
        # adopting the same weights twice gives the same model_version.
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def adopt(src: str | Path, dst: str | Path, prompt: PromptConfig, *, gguf: bool = False,
          licence: str | None = None) -> dict[str, Any]:
    """Make an R²ec checkpoint of a local Hugging Face causal-LM directory, or of a GGUF file
    (`gguf=True`): the model's own tokenizer and chat template, the R²ec tokens
    (`prepare_backbone`), the prompt settings and a manifest with the weights' provenance."""
    model, tokenizer, base_model, provenance = load_backbone(src, gguf)
    extra: dict[str, Any] = {"stage": "adopted", **provenance}
    if licence:
        extra["licence"] = licence
    model, tokenizer = prepare_backbone(model, tokenizer)
    return save(model, tokenizer, dst, R2ecSettings(prompt), base_model=base_model, extra=extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="R²ec checkpoint tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("adopt", help="make a checkpoint of a local Hugging Face model directory "
                       "or of a GGUF file (--gguf FILE)")
    a.add_argument("src", nargs="?", help="a Hugging Face model directory")
    a.add_argument("dst", help="the checkpoint directory to write")
    a.add_argument("--gguf", metavar="FILE", help="adopt this GGUF file instead of a directory "
                   "(needs the `gguf` package)")
    a.add_argument("--dataset", default="ml-100k", help="prompt preset (category words)")
    a.add_argument("--licence", help="the weights' licence, recorded in the manifest (known "
                   "registry files carry theirs)")
    v = sub.add_parser("verify", help="check a checkpoint's files against its manifest")
    v.add_argument("dir")
    args = p.parse_args(argv)
    if args.cmd == "adopt":
        if bool(args.src) == bool(args.gguf):
            p.error("adopt takes a model directory SRC or --gguf FILE (one of the two)")
        m = adopt(args.gguf or args.src, args.dst, PromptConfig.for_dataset(args.dataset),
                  gguf=bool(args.gguf), licence=args.licence)
    else:
        m = verify(args.dir)
    print(json.dumps({k: m[k] for k in ("model_version", "base_model", "tokenizer_hash")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
