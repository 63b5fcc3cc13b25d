"""Locations of tables and artifacts: a plain path or a URI (file://, s3a://, gs://, abfss://,
hdfs://, ...), the same string on the driver and on every executor.

Tables go through Spark and Delta, which read any Hadoop URI themselves. Model checkpoints and
FAISS indexes are folders of files that Python code opens; they go through fsspec, so one code
path serves a laptop folder and an object store (s3a:// needs the `s3` extra, s3fs; gs:// gcsfs;
abfss:// adlfs). An executor never reads the driver's disk: it copies a remote artifact once into
its own cache, keyed by what makes it immutable (a model's content hash, an index's checksum),
and every later task on that machine reuses the copy.

Object stores are configured the way their own tools are: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL (an S3-compatible store) for s3a://, and
R2EC_STORAGE_OPTIONS (JSON, passed to the fsspec filesystem) for anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from r2ec.files import replace_dir

log = logging.getLogger(__name__)

LOCAL_SCHEMES = ("", "file")


def scheme(location: str | os.PathLike) -> str:
    text = str(location)
    # "C:\\x" would parse as scheme "c"; a one-letter scheme is a drive, not a store.
    s = urlparse(text).scheme
    return "" if len(s) <= 1 else s.lower()


def is_local(location: str | os.PathLike) -> bool:
    return scheme(location) in LOCAL_SCHEMES


def resolve(location: str | os.PathLike) -> str:
    """The canonical form that is stored in tables and passed to executors: an absolute path for
    a local location (relative paths are relative to the current directory, as a user means
    them), the URI unchanged (without a trailing slash) otherwise."""
    text = str(location)
    if scheme(text) == "file":
        return str(Path(urlparse(text).path).resolve())
    if is_local(text):
        return str(Path(text).expanduser().resolve())
    return text.rstrip("/")


def join(location: str | os.PathLike, *parts: str) -> str:
    base = resolve(location)
    if is_local(base):
        return str(Path(base, *parts))
    return "/".join([base, *(p.strip("/") for p in parts)])


def local_path(location: str | os.PathLike) -> Path:
    if not is_local(location):
        raise ValueError(f"{location}: not a local path")
    return Path(resolve(location))


def storage_options(location: str) -> dict:
    """fsspec options for a remote location, from the environment (see the module docstring)."""
    opts = json.loads(os.environ.get("R2EC_STORAGE_OPTIONS", "{}") or "{}")
    if scheme(location) in ("s3", "s3a") and os.environ.get("AWS_ENDPOINT_URL"):
        opts.setdefault("client_kwargs", {}).setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
    return opts


def delta_rs_options(location: str) -> dict[str, str] | None:
    """deltalake (delta-rs) options for Spark-free reads of a remote table, same environment."""
    if is_local(location):
        return None
    opts = {k: str(v) for k, v in json.loads(os.environ.get("R2EC_DELTA_RS_OPTIONS", "{}") or "{}").items()}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if scheme(location) in ("s3", "s3a") and endpoint:
        opts.setdefault("AWS_ENDPOINT_URL", endpoint)
        opts.setdefault("AWS_ALLOW_HTTP", str(endpoint.startswith("http://")).lower())
        opts.setdefault("AWS_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    return opts


def filesystem(location: str):
    """(fsspec filesystem, path inside it) for a remote location."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(location, **storage_options(location))
    except ImportError as e:
        raise RuntimeError(f"{location}: no filesystem for {scheme(location)}:// is installed "
                           f"({e}); install the matching extra, e.g. pip install 'r2ec-batch[s3]'"
                           ) from e


def exists(location: str) -> bool:
    if is_local(location):
        return local_path(location).exists()
    fs, path = filesystem(location)
    return fs.exists(path)


def size(location: str) -> int | None:
    """The file's size in bytes, or None when there is no such file."""
    if is_local(location):
        p = local_path(location)
        return p.stat().st_size if p.is_file() else None
    fs, path = filesystem(location)
    return fs.size(path) if fs.isfile(path) else None


def glob(folder: str, pattern: str) -> list[str]:
    """Files in `folder` matching `pattern` (e.g. "*.inter"), as locations, sorted."""
    if is_local(folder):
        return sorted(str(p) for p in local_path(folder).glob(pattern))
    fs, path = filesystem(folder)
    prefix = resolve(folder)[: len(resolve(folder)) - len(path.rstrip("/"))]
    return sorted(prefix + p for p in fs.glob(f"{path.rstrip('/')}/{pattern}"))


def basename(location: str) -> str:
    return resolve(location).rstrip("/").rsplit("/", 1)[-1]


def read_text(location: str) -> str:
    """The file's text; FileNotFoundError when it is not there."""
    if is_local(location):
        return local_path(location).read_text()
    fs, path = filesystem(location)
    with fs.open(path, "r") as f:
        return f.read()


def write_text(location: str, text: str) -> str:
    """Write a file whole: locally through a temporary file and a rename, so a reader never
    sees half a file; remotely in one upload (object stores show a file only when complete)."""
    if is_local(location):
        p = local_path(location)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
        return str(p)
    fs, path = filesystem(location)
    with fs.open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return resolve(location)


def publish_dir(local_dir: str | Path, location: str, last: str | None = None) -> str:
    """Make `location` hold exactly the files of `local_dir`.

    Local: the folder is swapped in by a rename, so readers see the old or the new one whole.
    Remote (object stores have no rename): the old `last` file (a manifest) is removed first,
    every other file is uploaded, and `last` goes up at the end; a reader that checks the
    manifest against the files (checkpoints and indexes both do) never takes a half-written
    folder for a whole one."""
    src = Path(local_dir)
    if is_local(location):
        dest = local_path(location)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() == dest:
            return str(dest)
        staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        shutil.rmtree(staged)
        shutil.copytree(src, staged)
        replace_dir(staged, dest)
        return str(dest)
    fs, path = filesystem(location)
    if fs.exists(path):
        if last and fs.exists(f"{path}/{last}"):
            fs.rm(f"{path}/{last}")
        fs.rm(path, recursive=True)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        if f.name != last:
            fs.put_file(str(f), f"{path}/{f.relative_to(src).as_posix()}")
    if last and (src / last).is_file():
        fs.put_file(str(src / last), f"{path}/{last}")
    log.info("uploaded %d files to %s", len(files), location)
    return resolve(location)


def cache_root() -> Path:
    return Path(os.environ.get("R2EC_CACHE_DIR") or Path.home() / ".cache" / "r2ec")


# A cache entry is "<kind>/<name>": both plain names, so the entry is one folder inside the
# cache. Callers build names from values they have checked against their exact format
# (`r2ec-` + 12 hex digits, hex checksums); this is the last line of defence.
_CACHE_KEY = re.compile(r"^[a-z]+/[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def cache_entry(key: str) -> Path:
    """The cache folder of `key`, refused unless it is exactly one folder inside the cache."""
    root = cache_root().resolve()
    dest = (root / key).resolve() if _CACHE_KEY.match(key) else None
    if dest is None or dest.parent.parent != root:
        raise ValueError(f"refusing cache key {key!r}: not '<kind>/<name>' of plain names")
    return dest


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """One process at a time per cache entry: the Python workers of one executor share it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_copy(location: str, key: str, check: Callable[[Path], object] | None = None) -> Path:
    """A local folder holding the artifact at `location`: the folder itself when it is local,
    otherwise a copy in this machine's cache under `key` (which must change whenever the content
    does). `check(folder)` runs on a fresh copy and on a cached one; a cached copy that fails it
    is fetched again once, a fresh copy that fails it raises."""
    if is_local(location):
        return local_path(location)
    dest = cache_entry(key)  # only ever a folder inside the cache is removed or replaced
    with _locked(dest.with_name(f"{dest.name}.lock")):
        if dest.is_dir():
            try:
                if check:
                    check(dest)
                return dest
            except Exception as e:  # noqa: BLE001 - any failure means: fetch it again
                log.warning("cached copy %s failed its check (%s); fetching %s again", dest, e, location)
                shutil.rmtree(dest, ignore_errors=True)
        fs, path = filesystem(location)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            n = 0
            for remote in fs.find(path):
                rel = remote[len(path.rstrip("/")) + 1:]
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(tmp / rel))
                n += 1
            if n == 0:
                raise FileNotFoundError(f"{location}: no such folder, or it is empty")
            if check:
                check(tmp)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("copied %s (%d files) to the local cache %s", location, n, dest)
        return dest


@contextlib.contextmanager
def output_dir(location: str, last: str | None = None) -> Iterator[Path]:
    """A local folder to write an artifact into; on success it is published to `location`
    (`publish_dir`). A local `location` is written in place, as before."""
    if is_local(location):
        out = local_path(location)
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    work = Path(tempfile.mkdtemp(prefix="r2ec-out-", dir=_work_root()))
    try:
        yield work
        publish_dir(work, location, last=last)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _work_root() -> Path:
    root = cache_root() / "work"
    root.mkdir(parents=True, exist_ok=True)
    return root
