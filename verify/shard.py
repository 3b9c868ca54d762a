"""``detzoo verify DIR --shard K/N`` and ``detzoo merge DIR``: one verification split over machines.

A shard runs every model on a deterministic 1/N of the images: every N-th image from the K-th, in
the order verify uses (ascending image id with annotations, file name without). Its detections go
to cache files of its own under ``DIR/.detzoo-cache/detections`` (shards never write the same
file, even on a shared filesystem), and when it is done it writes, atomically and last, a record
of what it ran: ``DIR/.detzoo-cache/shards/shard-K-of-N.json``. No report and no manifest change:
a shard is half a measurement.

``merge`` checks that all N records exist and were made from the same images and models as the
manifest now lists, then runs the ordinary verify on all images with every detection read from
the cache (none is recomputed; a missing one is an error). The report is therefore the one an
unsharded run writes, except for timings, latency and the cache counters.

Owns: shard selection, shard records, merge's checks. Does not touch: evaluation (merge runs
the pipeline on the cache), the report's shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from detzoo.errors import DetzooError
from detzoo.fsutil import atomic_write_json
from detzoo.manifest import Manifest, now

SHARDS_DIR = ".detzoo-cache/shards"
SHARD_SCHEMA = "detzoo.shard/1"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self):
        if not (isinstance(self.index, int) and isinstance(self.count, int) and 1 <= self.index <= self.count):
            raise DetzooError(f"--shard must be K/N with 1 <= K <= N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise DetzooError(f"--shard takes K/N (shard K of N, e.g. 2/4), got {text!r}")
        return cls(int(m[1]), int(m[2]))

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def select(self, records: list) -> list:
        """Every ``count``-th record from the ``index``-th: balanced, and the N shards partition the list."""
        return records[self.index - 1::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class ShardResult:
    shard: Shard
    record: Path        # the shard's record file
    images: int         # images assigned to it
    evaluated: int      # images every model ran on (or found cached)
    skipped: list = field(default_factory=list)
    inferences: dict = field(default_factory=dict)
    seconds: float = 0.0


PATHS = ("images_dir", "annotations")  # may differ between machines; the image ids and contents may not


def fingerprint(p) -> dict:
    """What a shard ran on (a ``VerifyPlan``); every shard of one verification must have the same
    (paths aside: the cache keys each image by its content), and so must merge."""
    cfg = p.cfg
    ids = ",".join(str(r.image_id) for r in p.records)
    return {
        "images_dir": str(Path(p.images_dir).resolve()),
        "annotations": str(Path(cfg.annotations).resolve()) if cfg.annotations else None,
        "limit": cfg.limit,
        "image_ids_sha256": hashlib.sha256(ids.encode()).hexdigest(),
        "models": {"source": p.manifest.source["sha256"], **{n: p.manifest.variants[n].sha256 for n in p.names}},
        "io": p.manifest.io.to_dict(),
        "feed_size": list(cfg.feed_size) if cfg.feed_size else None,
    }


def verify_shard(cfg, shard: Shard, console=None) -> ShardResult:
    """Run every model of ``cfg`` on ``shard``'s images into the detection cache; write its record last.

    The verify pipeline's plan and local detection on 1/N of the images, without evaluation."""
    from detzoo.source import open_source
    from detzoo.verify.accuracy import collect_detections
    from detzoo.verify.core import Progress, open_models, plan

    if not cfg.use_cache:
        raise DetzooError("a shard's output is its detection cache; it cannot run with the cache off")
    t0 = time.perf_counter()
    p = plan(cfg)
    mine = shard.select(p.records)
    record_path = p.folder / SHARDS_DIR / f"{shard.tag}.json"
    record_path.unlink(missing_ok=True)  # until this run completes, this shard is not done
    evaluated, skipped, inferences = 0, [], {}
    if mine:
        with open_source(p.manifest.source["path"], expected_sha256=p.manifest.source.get("sha256")) as src, \
                contextlib.ExitStack() as stack:
            models = open_models(p, src, stack, cache_tag=shard.tag)
            with Progress(console).task(f"shard {shard} ({len(mine)} images x {len(models)} models)",
                                         len(mine)) as advance:
                collected = collect_detections(models, mine, advance, feed_size=cfg.feed_size)
        evaluated, skipped, inferences = len(collected.sizes), collected.skipped, collected.inferences
    seconds = time.perf_counter() - t0
    atomic_write_json(record_path, {
        "schema": SHARD_SCHEMA, "shard": str(shard), "created": now(), "fingerprint": fingerprint(p),
        "variants": p.names, "threads": cfg.threads,
        "images": len(mine), "evaluated": evaluated, "skipped": skipped, "inferences": inferences,
        "seconds": round(seconds, 3),
    })
    return ShardResult(shard, record_path, len(mine), evaluated, skipped, inferences, seconds)


def _load_records(folder: Path) -> dict:
    """{N: {K: record}} of every readable shard record in ``folder``."""
    groups: dict = {}
    d = folder / SHARDS_DIR
    for p in sorted(d.glob("shard-*-of-*.json")) if d.is_dir() else ():
        try:
            rec = json.loads(p.read_text())
            s = Shard.parse(rec["shard"])
        except (OSError, ValueError, KeyError, TypeError, DetzooError):
            raise DetzooError(f"shard record {p} is unreadable; delete it and re-run that shard") from None
        if rec.get("schema") != SHARD_SCHEMA or p.name != f"{s.tag}.json":
            raise DetzooError(f"{p} is not a detzoo shard record (expected schema {SHARD_SCHEMA!r})")
        groups.setdefault(s.count, {})[s.index] = rec
    return groups


def shard_group(folder: Path) -> list[dict]:
    """The records of the newest complete set of shards, in shard order; a clear error otherwise."""
    folder = Path(folder)
    Manifest.load(folder)  # a missing folder or manifest is named first
    groups = _load_records(folder)
    if not groups:
        raise DetzooError(f"no shards in {folder}: run 'detzoo verify {folder} --shard K/N' for K = 1..N first")
    complete = {n: g for n, g in groups.items() if len(g) == n}
    if not complete:
        n, g = max(groups.items(), key=lambda kv: max(r["created"] for r in kv[1].values()))
        missing = [f"{k}/{n}" for k in range(1, n + 1) if k not in g]
        raise DetzooError(f"shards of {folder} are incomplete: {', '.join(missing[:8])}"
                          f"{' ...' if len(missing) > 8 else ''} missing (run 'detzoo verify {folder} "
                          f"--shard {missing[0]}' with the same options)")
    n, g = max(complete.items(), key=lambda kv: max(r["created"] for r in kv[1].values()))
    recs = [g[k] for k in range(1, n + 1)]
    first = recs[0]
    for r in recs[1:]:
        keys = sorted(k for k in first["fingerprint"] if k not in PATHS
                      and r["fingerprint"].get(k) != first["fingerprint"][k])
        if keys or r["variants"] != first["variants"]:
            raise DetzooError(f"shard {r['shard']} ran on other {', '.join(keys) or 'variants'} than shard "
                              f"{first['shard']}; re-run it with the same options")
    return recs


def merge(folder, *, images=None, annotations=None, max_drop: float = 1.0, bootstrap: int = 0, seed: int = 0,
          reference_threshold: float = 0.5, latency_runs: int = 0, latency_images: int = 8,
          threads: int | None = None, allow_unsafe_ops: bool = False, console=None):
    """Combine the newest complete set of shards in ``folder`` into one report; returns ``VerifyResult``.

    The data (images, annotations, limit, variants) come from the shard records; ``images`` and
    ``annotations`` replace the recorded paths where this machine keeps them elsewhere. The other
    arguments are the evaluation options. ``threads`` (default: the shards') is recorded and used
    for latency, which is measured here only if ``latency_runs`` > 0 (the shards' machines may differ).
    """
    from detzoo.verify.core import VerifyConfig, plan, run

    folder = Path(folder)
    recs = shard_group(folder)
    first = recs[0]
    fp = first["fingerprint"]
    cfg = VerifyConfig(folder=folder, images=images or Path(fp["images_dir"]),
                       annotations=annotations or fp["annotations"], limit=fp["limit"],
                       threads=threads if threads is not None else int(first.get("threads", 1)),
                       latency_runs=latency_runs, latency_images=latency_images, max_drop=max_drop,
                       bootstrap=bootstrap, seed=seed, variants=list(first["variants"]),
                       reference_threshold=reference_threshold, cache_only=True, allow_unsafe_ops=allow_unsafe_ops,
                       feed_size=fp.get("feed_size"))
    p = plan(cfg, check_artifacts=False)
    now_fp = fingerprint(p)
    changed = sorted(k for k in fp if k not in PATHS and now_fp.get(k) != fp[k])
    if changed:
        what = {"models": "the manifest's models changed", "image_ids_sha256": "the image set changed",
                "io": "the manifest's IO spec changed"}
        raise DetzooError(f"shards of {folder} no longer match it: "
                          f"{'; '.join(what.get(k, k + ' changed') for k in changed)} since they ran; "
                          "re-run the shards")
    return run(p.check_artifacts(), console)
