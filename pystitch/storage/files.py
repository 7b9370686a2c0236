"""Small files between steps (plan, manifests, pairs, statistics): atomic
writes and validating reads.

Every file a step produces is written to a temporary name in the same
directory and renamed into place, so a killed task leaves either the whole
file or none of it.  Readers name the file in every error.  Arrays are stored
as ``.npz`` and read with ``allow_pickle=False``: no pickle for data files.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import PlanMismatchError, StagingError
from . import remote


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it, renamed
    into place: a reader sees the old file or the whole new one.  A process
    killed outright leaves the temporary file (see :func:`stray_temp_files`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def stray_temp_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files :func:`atomic_write_bytes` left beside ``path``
    when it was killed before renaming (``.<name>.<8 characters>.tmp``, the
    names it gives them, and nothing else)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    return [p for p in entries if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink()]


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise StagingError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise StagingError(f"Could not read {what} {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StagingError(f"{what} {path} is not valid JSON ({exc}); it is corrupt or truncated.") from exc


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def read_npz(path: str | os.PathLike, what: str, required: Iterable[str]) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        # the file is opened here, not by np.load, which leaks it when the zip is corrupt
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise StagingError(f"{what} not found: {path}") from None
    except Exception as exc:  # zipfile/format errors come in many types
        raise StagingError(f"{what} {path} is unreadable ({type(exc).__name__}: {exc}); it is corrupt.") from exc
    missing = [k for k in required if k not in out]
    if missing:
        raise StagingError(f"{what} {path} lacks the field(s) {', '.join(missing)}; it is corrupt.")
    return out


def step_files(sources: Any, default_dir: Path, pattern: str) -> list[Path]:
    """The files a step reads: ``sources`` is None (the plan's own directory,
    possibly absent), a path, or a list of paths; directories are searched for
    ``pattern`` (sorted)."""
    if sources is None:
        sources = [default_dir] if default_dir.is_dir() else []
    elif isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths: list[Path] = []
    for s in sources:
        p = Path(s)
        paths.extend(sorted(p.glob(pattern)) if p.is_dir() else [p])
    return paths


def check_plan_hash(found: Any, expected: str, where: str | os.PathLike) -> None:
    found = str(found.item() if isinstance(found, np.ndarray) else found)
    if found != expected:
        raise PlanMismatchError(
            f"{where} was produced for plan {found[:12]}, not for the plan in use ({expected[:12]}). "
            "Outputs of different plans are never mixed: rerun the step with this plan."
        )


def replace_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move directory ``src`` to ``dst`` (which must not exist) atomically when
    both are on one filesystem, else by a copy to a hidden sibling then a rename."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: different filesystems
            raise
    tmp = dst.with_name(f".{dst.name}.incoming")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    os.replace(tmp, dst)
    shutil.rmtree(src, ignore_errors=True)


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` (which must not exist) a copy of directory ``src`` whose files
    are hard links (a copy where links are impossible); ``src`` stays.  The
    tree is built under a hidden sibling name and renamed, so ``dst`` appears
    whole or not at all."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.incoming")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # another filesystem, or links not allowed: copy
            shutil.copy2(a, b)

    shutil.copytree(src, tmp, copy_function=link)
    os.replace(tmp, dst)


def exists(path: str | os.PathLike) -> bool:
    """Whether a path (or a dangling symlink) or anything at or below a URL exists."""
    if remote.is_remote(path):
        return remote.exists(os.fspath(path))
    return Path(path).exists() or Path(path).is_symlink()


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, a directory tree, or every object at and below a URL."""
    if remote.is_remote(path):
        remote.remove(os.fspath(path))
        return
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------- paths


def real(path: str | os.PathLike) -> Path:
    """The absolute path with symlinks resolved (for comparing places, not for messages)."""
    return Path(os.path.realpath(os.fspath(path)))


def contains(outer: str | os.PathLike, inner: str | os.PathLike) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it (symlinks resolved; URLs:
    the same bucket and a key prefix; a URL and a path are never nested)."""
    if remote.is_url(outer) or remote.is_url(inner):
        return remote.is_url(outer) and remote.is_url(inner) and remote.contains(os.fspath(outer), os.fspath(inner))
    a, b = real(outer), real(inner)
    return a == b or a in b.parents


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, a path that cannot be created: its nearest
    existing ancestor must be a writable directory and the name not too long.
    (A URL is checked by :func:`.remote.check_access`.)"""
    if remote.is_url(path):
        return
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise StagingError(f"Cannot create the {what} {path}: {probe} is a file, not a directory (ENOTDIR).")
    if not os.access(probe if probe.is_dir() else probe.parent, os.W_OK | os.X_OK):
        raise StagingError(f"Cannot write the {what} {path}: {probe} is not writable (EACCES or a read-only "
                           "filesystem). Expected a writable location.")
    limit = os.pathconf(probe if probe.is_dir() else probe.parent, "PC_NAME_MAX")
    long = [part for part in path.parts if len(part.encode()) > limit]
    if long:
        raise StagingError(f"Cannot create the {what} {path}: the name {long[0][:40]}... is longer than "
                           f"{limit} bytes (ENAMETOOLONG).")


# --------------------------------------------------------------------------- locks

LOCK_NAME = ".pystitch.lock"
#: locks this process holds: path -> [open file, how many times acquired]
_HELD: dict[Path, list] = {}


class DirectoryLock:
    """An exclusive lock on a directory for the time one run uses it.

    A second run that asks for it fails at once with a message naming the
    holder (process, host, start time, command).  Within one process the lock
    is re-entrant (the runner holds it for the whole run, the steps it calls
    take it again).  Where the filesystem has no locks (some parallel
    filesystems), a warning is logged and the run goes on unlocked.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "work directory") -> None:
        self.directory = Path(directory)
        self.what = what
        self.path = real(directory) / LOCK_NAME
        self._fh: Any = None

    def acquire(self) -> "DirectoryLock":
        import fcntl
        import socket
        import sys
        import time

        held = _HELD.get(self.path)
        if held is not None:
            held[1] += 1
            self._fh = held[0]
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise StagingError(f"The {self.what} {self.directory} is in use by {holder}. Expected one run per "
                               f"{self.what}: wait for it to finish, or use another output / --work-dir.") from None
        except OSError as exc:  # no locks on this filesystem
            import logging

            logging.getLogger(__name__).warning("could not lock %s (%s): running without a lock", self.path, exc)
            fh.close()
            return self
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
                 f"({' '.join(sys.argv[:1] + sys.argv[1:3])[:200]})\n")
        fh.flush()
        self._fh = fh
        _HELD[self.path] = [fh, 1]
        return self

    def release(self) -> None:
        """Unlock.  The file stays (removing it could let two later runs lock
        two different files); whoever cleans the directory removes it."""
        if self._fh is not None:
            held = _HELD.get(self.path)
            if held is not None:
                held[1] -= 1
                if held[1] == 0:
                    del _HELD[self.path]
                    self._fh.close()
            self._fh = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
