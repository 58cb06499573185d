"""Run directories in a bucket (`gs://bucket/run`) as well as on a disk.

Checkpoints are written straight to the bucket (orbax and tensorstore speak `gs://`; every host of a pod
writes its shards there). The small files a run writes as it goes — metrics.jsonl, TensorBoard events,
config.gin, train.log, eval.json, plots — are written to a local working copy (`local_copy`) and
uploaded after every iteration (`Mirror`), so a preempted VM that comes back with an empty disk resumes
from the bucket alone. Bucket access goes through fsspec (gcsfs), which also serves orbax's paths;
`STORAGE_EMULATOR_HOST` and `TENSORSTORE_GCS_HTTP_URL` point both at an emulator (the tests do).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath

REMOTE_SCHEMES = ("gs://",)
# Files the launcher writes before training starts (this run's config, each process's log): a pull
# keeps the local ones; the bucket's earlier log is pulled by the launcher first (Mirror.pull(only=...)).
LAUNCHER_FILES = ("config.gin", "train.log", "train.process*.log")


def is_remote(path: str) -> bool:
    return str(path).startswith(REMOTE_SCHEMES)


def join(directory: str, *names: str) -> str:
    return posixpath.join(directory, *names) if is_remote(directory) else os.path.join(directory, *names)


def filesystem(path: str):
    """The fsspec filesystem of `path`: gcsfs for gs://, the local one otherwise."""
    import fsspec
    if not is_remote(path):
        return fsspec.filesystem("file")
    try:
        return fsspec.filesystem("gs")
    except ImportError:
        raise ValueError(f"{path} is in Google Cloud Storage, which needs gcsfs: pip install gcsfs "
                         "(or the package's [gcs] extra).") from None


def local_copy(remote: str, kind: str = "runs") -> str:
    """The local copy of a bucket path, ~/.cache/exit_jax/<kind>/<name>_<hash>: the same path for the
    same bucket path on one machine."""
    remote = remote.rstrip("/")
    digest = hashlib.sha256(remote.encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser("~"), ".cache", "exit_jax", kind, f"{posixpath.basename(remote)}_{digest}")


def relative_files(directory: str) -> dict:
    """{path relative to directory: size} of every file under it (an empty dict if there is none)."""
    fs = filesystem(directory)
    root = fs._strip_protocol(directory).rstrip("/")
    if not fs.exists(root):
        return {}
    return {path[len(root) + 1:]: int(info["size"]) for path, info in fs.find(root, detail=True).items()}


class Mirror:
    """A bucket directory's small files, kept in a local working copy: `pull` fetches what the bucket
    holds (a resumed run on an empty disk), `push` uploads the files that changed since the last push."""

    def __init__(self, remote: str, local: str | None = None, skip: tuple = ("checkpoints",)):
        self.remote, self.local = remote.rstrip("/"), local or local_copy(remote)
        self.skip = skip  # top-level names that live in the bucket only
        self._pushed: dict = {}
        os.makedirs(self.local, exist_ok=True)

    def _kept(self, relative: str) -> bool:
        return relative.split("/")[0] not in self.skip

    def pull(self, only: tuple = ()) -> None:
        """Downloads the bucket's files into the working copy (the bucket's copy wins: it may be newer,
        from another machine), except the launcher's files that are already here; `only`: just these."""
        fs = filesystem(self.remote)
        wanted = [r for r in only if fs.exists(join(self.remote, r))] if only else relative_files(self.remote)
        for relative in wanted:
            ours = any(fnmatch.fnmatch(relative, p) for p in LAUNCHER_FILES) and os.path.exists(
                os.path.join(self.local, relative))
            if self._kept(relative) and not ours:
                target = os.path.join(self.local, *relative.split("/"))
                _download(fs, join(self.remote, relative), target)
                self._pushed[relative] = _stamp(target)

    def push(self) -> None:
        fs = filesystem(self.remote)
        for root, _, names in os.walk(self.local):
            for name in names:
                path = os.path.join(root, name)
                relative = os.path.relpath(path, self.local).replace(os.sep, "/")
                if not self._kept(relative) or name.endswith(".tmp"):
                    continue
                stamp = _stamp(path)
                if self._pushed.get(relative) != stamp:
                    fs.put_file(path, join(self.remote, relative))
                    self._pushed[relative] = stamp


def _download(fs, source: str, target: str) -> None:
    """source (in fs) to the local path target, whole or not at all: a download cut short is not kept."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fs.get_file(source, target + ".tmp")
    os.replace(target + ".tmp", target)


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def fetch(remote: str, kind: str = "models") -> str:
    """A local copy of a bucket file or directory (a checkpoint, a data set) for readers that need local
    files: downloaded once into ~/.cache/exit_jax/<kind>/, files of the right size kept."""
    fs = filesystem(remote)
    local = local_copy(remote, kind)
    root = fs._strip_protocol(remote).rstrip("/")
    if not fs.exists(root):
        raise FileNotFoundError(f"{remote} does not exist.")
    if fs.isdir(root):
        result = local
        files = {join(remote.rstrip("/"), rel): (os.path.join(local, *rel.split("/")), size)
                 for rel, size in relative_files(remote).items()}
    else:
        result = os.path.join(local, posixpath.basename(root))
        files = {remote: (result, fs.size(root))}
    for source, (target, size) in files.items():
        if not (os.path.exists(target) and os.path.getsize(target) == size):  # else fetched before
            _download(fs, source, target)
    return result
