"""File helpers every part of the project shares: a file's SHA-256, and replacing a folder by
a complete new one in two renames (a reader or a killed writer sees the old folder or the new
one, never a mix)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def replace_dir(new: Path, dest: Path) -> None:
    """Put the complete folder `new` (a sibling of `dest`) in `dest`'s place. The previous
    folder is moved aside to `.<name>.old` first and removed last; a crash between the two
    renames leaves it there, which `recover_dir` puts back."""
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dest: Path) -> Path | None:
    """`dest`, or the previous folder a crash inside `replace_dir` left aside; None if neither."""
    old = dest.with_name(f".{dest.name}.old")
    if not dest.exists() and old.is_dir():
        old.rename(dest)
    return dest if dest.exists() else None
