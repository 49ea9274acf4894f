"""Where the demo keeps files, and for how long: nothing a patient could be identified by may
outlive its use.

- One private folder per server run, ``<tmp>/rrg-demo-<uid>/run-XXXX`` (0700, as its parent),
  holding Gradio's uploads and cache and the downloads the app writes. A run holds an exclusive
  lock on its folder while it lives; at start-up every folder whose lock is free (its server
  ended, even by SIGKILL) is deleted, and on SIGTERM/SIGINT or a normal exit the run deletes its own.
- Uploads are taken off the disk at their first read: the file is deleted and its bytes wait in
  memory for the request that reads them (:class:`Uploads`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

LOCK_NAME = ".lock"
# A run folder without a lock file this young may be a server that is starting right now.
STARTING_GRACE_S = 60
# Uploads read by a request's validator wait this long for the request itself (the queue), then go.
PARKED_TTL_S = 1800


def private_parent() -> Path:
    """The per-user parent of all run folders, created 0700; refused if someone else owns it."""
    parent = Path(tempfile.gettempdir()) / f"rrg-demo-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    info = parent.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(f"{parent} is not a folder of this user; remove it and start again")
    parent.chmod(0o700)
    return parent


class RunFolder:
    """This run's private folder: ``uploads`` (Gradio's temp dir) and ``outbox`` (downloads)."""

    def __init__(self, parent: Path | None = None) -> None:
        self.parent = parent or private_parent()
        self.purged_at_start = purge_stale(self.parent)
        self.root = Path(tempfile.mkdtemp(prefix="run-", dir=self.parent))  # 0700
        self._lock = open(self.root / LOCK_NAME, "w")  # noqa: SIM115 (held for the life of the run)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.uploads = self.root / "gradio"
        self.outbox = self.root / "outbox"
        for folder in (self.uploads, self.outbox):
            folder.mkdir(mode=0o700)

    def files(self) -> list[Path]:
        """Every file left in the run folder except its lock."""
        return [p for p in self.root.rglob("*") if p.is_file() and p.name != LOCK_NAME]

    def purge(self) -> None:
        """Delete the whole run folder (idempotent)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self._lock.close()


def purge_stale(parent: Path) -> int:
    """Delete the run folders under ``parent`` whose server is gone; returns how many files they held."""
    removed = 0
    for folder in parent.iterdir():
        if folder.is_dir() and not _alive(folder):
            removed += sum(1 for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME)
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def _alive(folder: Path) -> bool:
    """Whether a server holds the folder's lock (or may be creating the folder right now)."""
    try:
        with open(folder / LOCK_NAME) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
    except FileNotFoundError:
        return time.time() - folder.stat().st_mtime < STARTING_GRACE_S
    except BlockingIOError:
        return True
    return False


class Uploads:
    """Uploaded files, deleted from the disk as soon as they are read.

    ``take`` reads an upload, deletes it, and parks its bytes in memory under its path until
    ``claim`` hands them to the request that reads them next (an API request's validator reads a
    file before the queue, its generation after it). Only files inside ``root`` are ever deleted,
    and never one identical to a bundled example (synthetic, and the page's example gallery
    points at Gradio's copy of it).
    """

    def __init__(self, root: Path, keep: Iterable[Path] = ()) -> None:
        self.root = Path(root).resolve()
        self._keep = {_digest(Path(p).read_bytes()) for p in keep}
        self._parked: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def take(self, path: str | os.PathLike) -> bytes | None:
        """The upload's bytes (None if it is gone), parked until claimed; the file is deleted."""
        key = str(path)
        with self._lock:
            self._expire()
            if key in self._parked:
                return self._parked[key][0]
            data = self._read_and_delete(Path(path))
            if data is not None:
                self._parked[key] = (data, time.monotonic())
            return data

    def claim(self, path: str | os.PathLike) -> bytes | None:
        """The upload's bytes, no longer parked (read from the disk if nothing took them yet)."""
        with self._lock:
            parked = self._parked.pop(str(path), None)
            return parked[0] if parked is not None else self._read_and_delete(Path(path))

    def parked(self) -> int:
        """How many uploads wait in memory."""
        return len(self._parked)

    def _expire(self) -> None:
        cutoff = time.monotonic() - PARKED_TTL_S
        for key in [k for k, (_, since) in self._parked.items() if since < cutoff]:
            del self._parked[key]

    def _read_and_delete(self, path: Path) -> bytes | None:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        resolved = path.resolve()
        if resolved.is_relative_to(self.root) and _digest(data) not in self._keep:
            resolved.unlink(missing_ok=True)
            _remove_empty(resolved.parent, self.root)
        return data


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _remove_empty(folder: Path, root: Path) -> None:
    """Gradio puts each upload in a folder of its own: remove it once empty."""
    if folder != root:
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()
