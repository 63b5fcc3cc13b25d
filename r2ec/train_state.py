"""Resumable training state without pickle: what `--resume` reads is tensors in safetensors and
everything else in JSON, every file listed with its SHA-256 in the state's manifest and checked
before anything is read.

A state folder (`<out>/state`, written by `run_loop` every `save_every` steps and at the end):

    manifest.json            format, step, parent model version, world size, file digests
    <part>.safetensors       the part's tensors (trainable weights, optimiser moments, item table)
    <part>.json              the rest: counters, data order, optimiser hyper-parameters, with
                             {"__tensor__": key} where a tensor was
    rng-<rank>.safetensors/.json   each process's random-number generators

Why not accelerate's `save_state`: it writes the optimiser, the random states and registered
objects with `torch.save` and loads them with `weights_only=False`, so a planted file in the
output folder runs code at `--resume`. Here a file that is not in the manifest, a digest that
differs, a name that is not a plain file name, or a JSON that is not the project's own layout
is refused with an error naming it. Only the trainable parameters are stored (a LoRA run's
adapters, or all weights of a full fine-tune): the frozen rest is the starting checkpoint,
whose model_version the manifest records and a resume must match.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from r2ec.files import recover_dir, replace_dir, sha256_file

FORMAT = "r2ec-train-state/1"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}\.(json|safetensors)$")


class StateError(RuntimeError):
    """A training state folder is incomplete, altered, or not one this project wrote."""


# -- nested objects <-> (JSON skeleton, tensors) -----------------------------------------------
def _split(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, dict):  # keys may be ints (an optimiser's state): kept with their type
        return {"__dict__": [[k, _split(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_split(v, tensors) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state")


def _join(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, list):
        return [_join(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise StateError(f"{where}: unexpected value {obj!r:.80}")
    if set(obj) == {"__tensor__"} or set(obj) == {"__ndarray__"}:
        key = obj.get("__tensor__", obj.get("__ndarray__"))
        if key not in tensors:
            raise StateError(f"{where}: tensor {key!r} is missing")
        return tensors[key] if "__tensor__" in obj else tensors[key].numpy()
    if set(obj) == {"__tuple__"}:
        return tuple(_join(v, tensors, where) for v in obj["__tuple__"])
    if set(obj) == {"__dict__"}:
        pairs = obj["__dict__"]
        if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], (int, str))
                   for p in pairs):
            raise StateError(f"{where}: malformed mapping")
        return {k: _join(v, tensors, where) for k, v in pairs}
    raise StateError(f"{where}: unexpected object with keys {sorted(obj)[:5]}")


# -- random-number generators ------------------------------------------------------------------
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- folders -----------------------------------------------------------------------------------
def _write_part(folder: Path, name: str, obj: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(obj, tensors)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def save(folder: str | Path, parts: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write `parts` (name -> nested dict of tensors and plain values) and this process's RNG
    state into `folder`, atomically: a new folder beside it, renamed over the old one, so a
    kill mid-save leaves the previous state whole. Single-process callers only; see
    `save_distributed` for several processes."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, obj in {**parts, "rng-0": rng_state()}.items():
            _write_part(tmp, name, obj)
        _commit(tmp, folder, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit(tmp: Path, folder: Path, meta: dict[str, Any]) -> None:
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"format": FORMAT, **meta, "files": files}, indent=1))
    replace_dir(tmp, folder)


def save_distributed(folder: str | Path, parts: dict[str, Any], meta: dict[str, Any], rank: int,
                     barrier) -> None:
    """The same with several processes: every process writes its RNG state into a staging
    folder the main process made, then the main process writes the shared parts and commits."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.staging")
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    _write_part(staging, f"rng-{rank}", rng_state())
    barrier()
    if rank == 0:
        for name, obj in parts.items():
            _write_part(staging, name, obj)
        _commit(staging, folder, meta)
    barrier()


def verify(folder: str | Path) -> dict[str, Any]:
    """The manifest, after checking that the folder holds exactly the files it lists (plain
    names of the project's own kinds), each with its recorded digest."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StateError(f"{folder}: no readable {MANIFEST} ({e}); not a training state this "
                         "project wrote (an older one? start without --resume, or remove it)") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StateError(f"{folder}: unknown training-state format {manifest.get('format')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise StateError(f"{folder}: the manifest lists no files")
    present = {p.name for p in folder.iterdir()} - {MANIFEST}
    for name in sorted(set(files) | present):
        if not _NAME.match(name):
            raise StateError(f"{folder}: {name!r} is not a training-state file name")
        if name not in files:
            raise StateError(f"{folder}: {name} is not in the manifest")
        path = folder / name
        if not path.is_file() or path.is_symlink():
            raise StateError(f"{folder}: {name} is missing or not a plain file")
        if sha256_file(path) != files[name]:
            raise StateError(f"{folder}: {name} differs from the manifest (altered or truncated)")
    return manifest


def load_part(folder: str | Path, name: str) -> Any:
    """One part of a verified state folder."""
    folder = Path(folder)
    tensors = load_file(str(folder / f"{name}.safetensors"))
    try:
        skeleton = json.loads((folder / f"{name}.json").read_text())
    except json.JSONDecodeError as e:
        raise StateError(f"{folder}: {name}.json is not JSON ({e})") from e
    return _join(skeleton, tensors, f"{folder}/{name}")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    params = dict(trainable_state(model))
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise StateError(f"{where}: trainable weights differ from this model's (missing "
                         f"{missing[:3]}, unexpected {extra[:3]}): another model or LoRA setting")
    with torch.no_grad():
        for name, p in params.items():
            if state[name].shape != p.shape:
                raise StateError(f"{where}: {name} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(p.shape)}")
            p.copy_(state[name].to(p.device, p.dtype))


def optimizer_state(opt) -> dict:
    return opt.state_dict()


def restore_optimizer(opt, state: dict, where: str) -> None:
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as e:
        raise StateError(f"{where}: the optimiser state does not fit this run ({e})") from e


def state_folder(folder: str | Path) -> Path | None:
    """The state folder to resume from, or None when there is none. A save killed between its
    two renames leaves only `.<name>.old`, the previous complete state: it is put back."""
    return recover_dir(Path(folder))
