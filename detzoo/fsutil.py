"""Crash-safe file writing and content hashing.

Every artifact is written to a temporary name inside its destination folder and renamed into
place, so a killed process leaves either the old file or the new one, never half of one.

Owns: atomic writes, staged files committed together through a journal (rolled forward after a
crash), stale temporaries, sha256 of files and trees. Does not touch: what the files mean
(``detzoo.manifest`` decides what is written).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".detzoo-tmp-"
JOURNAL = ".detzoo-journal.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(root: str | os.PathLike) -> str:
    """Hash of a folder: every file's relative path and content, in sorted order."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is fsynced and renamed onto ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; published files are world-readable
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike, obj) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def staging(folder: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary inside ``folder`` to fill and hand to ``commit``; removed if the commit never happens."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def commit(folder: str | os.PathLike, renames: dict, writes: dict) -> None:
    """Put staged temporaries in place (final name -> temporary) and write JSON files as one step.

    A journal naming every step is written (atomically) before the first rename; a process killed
    half-way leaves the journal, and the next ``roll_forward`` finishes the job. So the files and
    the manifest that records their sha256s can never disagree."""
    folder = Path(folder)
    for tmp in renames.values():
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    journal = {"renames": {final: Path(tmp).name for final, tmp in renames.items()}, "writes": writes}
    atomic_write_json(folder / JOURNAL, journal)
    roll_forward(folder)


def roll_forward(folder: str | os.PathLike) -> bool:
    """Finish a commit a killed process left half done; True if there was one."""
    folder = Path(folder)
    path = folder / JOURNAL
    if not path.is_file():
        return False
    journal = json.loads(path.read_text())  # written atomically: never torn
    for final, tmp in journal["renames"].items():
        staged = folder / tmp
        if staged.is_file():
            os.chmod(staged, 0o666 & ~_umask())
            os.replace(staged, folder / final)
    for name, obj in journal["writes"].items():
        atomic_write_json(folder / name, obj)
    path.unlink()
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries a killed run left behind (after finishing its commit); returns what was removed."""
    roll_forward(folder)
    removed = []
    for p in Path(folder).glob(TMP_PREFIX + "*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
