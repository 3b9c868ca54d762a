"""``detzoo reverify DIR``: replay a zoo entry and report drift. What a zoo's CI runs on every entry.

Checks every sha256 the manifest records, re-runs verification with the recorded settings on the
recorded images (in a scratch folder, without the entry's detection cache, so a changed runtime
shows), and compares every COCO number with the recorded one. The entry itself is not modified.

Owns: integrity checks and drift. Does not touch: the entry (it verifies in a scratch copy).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from detzoo.cpu import cpu_class
from detzoo.errors import DetzooError
from detzoo.fsutil import sha256_path
from detzoo.manifest import MANIFEST, Manifest, tool_versions
from detzoo.options import DRIFT_TOLERANCE
from detzoo.verify.report import VerifyReport

DEFAULT_TOLERANCE = DRIFT_TOLERANCE.default  # AP units: 0.2 points, above run-to-run noise of a deterministic CPU pass


@dataclass
class Drift:
    model: str
    metric: str
    recorded: float
    now: float
    allowed: float

    def __str__(self) -> str:
        return (f"{self.model} {self.metric}: recorded {self.recorded:.4f}, now {self.now:.4f} "
                f"(moved {abs(self.now - self.recorded):.4f} > {self.allowed:.4f})")


@dataclass
class ReverifyResult:
    integrity: list = field(default_factory=list)   # sha256 mismatches and missing files
    drift: list = field(default_factory=list)       # Drift entries
    changed_tools: dict = field(default_factory=dict)
    images: int = 0
    cpu_note: str | None = None                     # the recorded numbers come from another CPU class
    latency: dict = field(default_factory=dict)     # model -> p50 ms, re-measured on this class

    @property
    def passed(self) -> bool:
        return not self.integrity and not self.drift

    def lines(self) -> list[str]:
        out = [f"integrity: {p}" for p in self.integrity] + [f"drift: {d}" for d in self.drift]
        out += [f"tool changed: {k} {a} -> {b}" for k, (a, b) in self.changed_tools.items()]
        if self.cpu_note:
            out.append(f"cpu: {self.cpu_note}")
            out += [f"latency here: {k} p50 {v:.1f} ms" for k, v in self.latency.items()]
        return out


def _integrity(folder: Path, m: Manifest) -> list[str]:
    problems = []
    src = Path(m.source["path"])
    if not src.exists():
        problems.append(f"source {src} is missing")
    elif sha256_path(src) != m.source["sha256"]:
        problems.append(f"source {src.name} changed (sha256 differs from the manifest)")
    for name, v in m.variants.items():
        p = folder / v.file
        if not p.is_file():
            problems.append(f"artifact {v.file} ({name}) is missing")
        else:
            try:
                m.checked_artifact(folder, name)
            except DetzooError:
                problems.append(f"artifact {v.file} ({name}) was modified: sha256 differs from the manifest")
    return problems


def reverify(folder, tolerance: float = DEFAULT_TOLERANCE, console=None, allow_unsafe_ops: bool = False) -> ReverifyResult:
    from detzoo.verify import VerifyConfig, verify

    folder = Path(folder)
    m = Manifest.load(folder)
    recorded = VerifyReport.load(folder)
    result = ReverifyResult(integrity=_integrity(folder, m))
    if result.integrity:
        return result
    data = recorded.data
    variants = [n for n in recorded.models if n != "source"]
    was, here = recorded.cpu_class, cpu_class()
    runs = 0
    if was and was != here:  # latency belongs to a CPU class: measure it here instead of comparing
        runs = (recorded.latency.runs if recorded.latency else 0) or 50
        result.cpu_note = (f"recorded on a {was} CPU, this machine is {here}: latency re-measured here "
                           f"({runs} runs), not compared with the recorded figures")
    with tempfile.TemporaryDirectory(prefix="detzoo-reverify-") as tmp:
        scratch = Path(tmp)
        shutil.copy2(folder / MANIFEST, scratch / MANIFEST)
        for v in m.variants.values():
            try:
                os.link(folder / v.file, scratch / v.file)
            except OSError:
                shutil.copy2(folder / v.file, scratch / v.file)
        # An infinite budget: drift, not the gate, is what reverify judges.
        now = verify(VerifyConfig(folder=scratch, images=data.images_dir, annotations=data.annotations,
                                  limit=data.limit, threads=recorded.threads, latency_runs=runs,
                                  max_drop=float("inf"), variants=variants, use_cache=False,
                                  reference_threshold=recorded.reference_threshold,
                                  allow_unsafe_ops=allow_unsafe_ops, feed_size=data.feed_size,
                                  batch=recorded.latency.batch if recorded.latency else 1), console).report
    result.images = now.data.evaluated
    if runs:
        result.latency = {k: e.latency.p50_ms for k, e in now.models.items() if e.latency}
    if now.data.image_ids != data.image_ids:
        result.drift.append(Drift("data", "image ids", len(data.image_ids), len(now.data.image_ids), 0))
    for name, old in recorded.models.items():
        new = now.models.get(name)
        if new is None:
            continue
        ci = old.drop_ci or {}
        ci_half = (ci["high"] - ci["low"]) / 2 if ci else 0.0  # AP units, as the stats
        for metric, value in old.stats.items():
            allowed = max(tolerance, ci_half if metric == "AP" else 0.0)
            cur = new.stats[metric]
            if abs(cur - value) > allowed + 1e-12:
                result.drift.append(Drift(name, metric, value, cur, allowed))
    old_tools, cur_tools = recorded.tool_versions, tool_versions()
    result.changed_tools = {k: (old_tools[k], cur_tools.get(k)) for k in old_tools if old_tools[k] != cur_tools.get(k)}
    return result

