"""Per-image detections cached under the output folder, one append-only JSONL file per model.

A verify that is killed resumes where it stopped, and a second verify of unchanged models
re-evaluates without running them. Entries are keyed by the model's sha256 (the file name, with a
hash of the IO spec, which decides preprocessing and class ids) and by the image id together with
the sha256 of the image file, so a different image under the same id is a miss, never a wrong hit.

Crash safety: each entry is one line written with a single ``write`` and flushed; a process
killed mid-write leaves at most a torn last line (no newline), which loading ignores and the next
append cuts off first. Detections are stored as float32 values, so a cached run evaluates bit-identically.

Owns: the detection cache's files and keys. Does not touch: models, evaluation, the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from detzoo.detections import Detections

CACHE_DIR = ".detzoo-cache/detections"


@dataclass(frozen=True)
class CachedImage:
    hw: tuple
    detections: Detections


def io_digest(io_dict: dict) -> str:
    return hashlib.sha256(json.dumps(io_dict, sort_keys=True).encode()).hexdigest()[:12]


class DetectionCache:
    """Detections of one model: ``get(image_id, image_sha)`` and ``put(...)`` (appends at once).

    ``tag`` (a shard such as ``shard-2-of-4``) makes ``put`` append to a file of its own, so shards
    running at once, on one machine or on several sharing the folder, never write the same file.
    Every file of the model is read, which is what lets ``detzoo merge`` evaluate their union.
    """

    def __init__(self, folder: str | os.PathLike, model_sha256: str, io_dict: dict, tag: str | None = None):
        stem = f"{model_sha256}-{io_digest(io_dict)}"
        self.path = Path(folder) / CACHE_DIR / (f"{stem}.jsonl" if tag is None else f"{stem}.{tag}.jsonl")
        self.entries: dict[tuple[int, str], CachedImage] = {}
        self.torn_lines = 0
        for p in sorted(self.path.parent.glob(f"{stem}*.jsonl")) if self.path.parent.is_dir() else ():
            self._load(p)

    def _load(self, path: Path) -> None:
        *lines, tail = path.read_bytes().split(b"\n")
        if tail:
            self.torn_lines += 1  # no newline yet: the write was cut (an entry counts once its newline is written)
        for line in lines:
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                self.entries[(int(d["id"]), str(d["image"]))] = CachedImage(tuple(d["hw"]), Detections.from_json(d["det"]))
            except (ValueError, KeyError, TypeError):
                self.torn_lines += 1  # a line cut by a kill: ignored, the image runs again

    def get(self, image_id: int, image_sha: str) -> CachedImage | None:
        return self.entries.get((int(image_id), image_sha))

    def put(self, image_id: int, image_sha: str, hw, det: Detections) -> None:
        line = json.dumps({"id": int(image_id), "image": image_sha, "hw": [int(hw[0]), int(hw[1])],
                           "det": det.to_json()}, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
        self.entries[(int(image_id), image_sha)] = CachedImage((int(hw[0]), int(hw[1])), det)

    def _cut_torn_tail(self) -> None:
        """A kill mid-write leaves a last line without its newline; drop it before appending."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)


def image_sha256(path: str | os.PathLike) -> str:
    from detzoo.fsutil import sha256_file

    return sha256_file(path)
