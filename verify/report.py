"""The verification report: one typed value, made once by ``detzoo verify``.

It owns the report's shape and its JSON (schema ``detzoo.report/1``, unchanged since the first
release, so every recorded report.json still loads). REPORT.md, report.html, the model card, the
CLI summary and reverify read this type; none parses a file it wrote. Drops are kept as COCO
stats are (fractions of AP) and read in points through ``ModelReport.drop_points`` /
``drop_ci_points``, the unit of the gate and of every table. It does not measure, render or gate:
verify/core.py fills it, verify/markdown.py, html.py and card.py render it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from detzoo.detections import Agreement
from detzoo.errors import DetzooError
from detzoo.verify.latency import LatencyStats

REPORT_JSON = "report.json"
REPORT_SCHEMA = "detzoo.report/1"


def _known(cls, d: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


class _Record:
    """A flat dataclass in the report: JSON is its fields (unknown keys of older reports ignored)."""

    @classmethod
    def from_json(cls, d: dict | None):
        return None if d is None else cls(**_known(cls, d))

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class CocoSummary(_Record):
    """What a report keeps of one COCO evaluation: the 12 stats, per-category AP and the PR curves."""

    stats: dict                  # stat name -> value (AP units; -1 where COCO has no data)
    per_category: list           # [{"id", "name", "AP", "AP50"}]
    num_images: int
    num_detections: int
    evaluator: str = "pycocotools"
    recall_thresholds: list = field(default_factory=list)
    pr_curves: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelLatency(_Record, LatencyStats):
    """One model's timed calls and the CPU class they ran on (latency is never compared across classes)."""

    cpu_class: str | None = None


@dataclass
class ModelReport:
    """The source or one artifact: what ran, how it scored, how fast."""

    framework: str
    precision: str
    file: str
    sha256: str
    size: int
    coco: CocoSummary
    fidelity: CocoSummary | None = None   # against the source's confident detections
    agreement: Agreement | None = None    # artifacts only
    drop: dict = field(default_factory=dict)   # stat name -> source - model, in AP units like the stats
    drop_ci: dict | None = None           # paired bootstrap of the AP drop: low, high (AP units), resamples...
    latency: ModelLatency | None = None
    speedup: float | None = None          # source p50 / this p50
    inferences: int = 0
    cache_hits: int = 0
    warnings: list = field(default_factory=list)

    @property
    def stats(self) -> dict:
        return self.coco.stats

    @property
    def drop_points(self) -> float | None:
        """The AP drop against the source in points (x100), the gate's unit; None if COCO had no data."""
        d = self.drop.get("AP")
        return None if d is None else d * 100

    @property
    def drop_ci_points(self) -> tuple[float, float] | None:
        return None if not self.drop_ci else (self.drop_ci["low"] * 100, self.drop_ci["high"] * 100)

    @classmethod
    def from_json(cls, d: dict) -> "ModelReport":
        ag = d.get("agreement")
        return cls(**{**_known(cls, d), "coco": CocoSummary.from_json(d["coco"]),
                      "fidelity": CocoSummary.from_json(d.get("fidelity")),
                      "agreement": Agreement(**_known(Agreement, ag)) if ag else None,
                      "latency": ModelLatency.from_json(d.get("latency"))})

    def to_json(self) -> dict:
        return {"framework": self.framework, "precision": self.precision, "file": self.file, "sha256": self.sha256,
                "size": self.size, "coco": self.coco.to_json(),
                "fidelity": self.fidelity.to_json() if self.fidelity else None,
                "agreement": self.agreement.to_json() if self.agreement else None,
                "drop": dict(self.drop), "drop_ci": self.drop_ci,
                "latency": self.latency.to_json() if self.latency else None, "speedup": self.speedup,
                "inferences": self.inferences, "cache_hits": self.cache_hits, "warnings": list(self.warnings)}


@dataclass
class DataInfo(_Record):
    """The images: where from, how they were fed, which were evaluated and which skipped."""

    images_dir: str
    annotations: str | None
    limit: int | None
    feed: str                    # how every model was fed (verify.core.feeding)
    feed_size: list | None
    requested: int
    evaluated: int
    image_ids: list
    skipped: list

    @classmethod
    def from_json(cls, d: dict) -> "DataInfo":
        return super().from_json({"feed": "", "feed_size": None, **d})  # reports older than --feed-size


@dataclass
class Gate:
    """The accuracy budget: an artifact fails when its AP drop exceeds ``max_drop_points``."""

    metric: str                # "AP" (ground truth) or "fidelity AP" (reference mode)
    max_drop_points: float
    failed: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed

    @classmethod
    def judge(cls, metric: str, max_drop_points: float, models: dict) -> "Gate":
        failed = [n for n, m in models.items()
                  if n != "source" and m.drop_points is not None and m.drop_points > max_drop_points + 1e-9]
        return cls(metric, max_drop_points, failed)

    def to_json(self) -> dict:
        return {"metric": self.metric, "max_drop_points": self.max_drop_points, "failed": list(self.failed),
                "passed": self.passed}


@dataclass
class LatencySetup(_Record):
    """How latency was measured (the same for every model)."""

    runs: int
    warmup: int
    images: list
    threads: int
    inter_op_threads: int = 1
    batch: int = 1
    timed: str = "model call only"
    order: str = "round-robin over models"
    cpu_class: str | None = None



@dataclass
class VerifyReport:
    """Everything ``detzoo verify`` measured on one entry; ``report.json`` is its ``to_json``."""

    name: str
    created: str
    mode: str                    # "ground_truth" or "reference"
    reference_threshold: float
    data: DataInfo
    gate: Gate
    models: dict                 # name -> ModelReport; "source" first
    bootstrap: dict | None = None   # {"resamples", "seed", "confidence", "paired_over"}
    latency: LatencySetup | None = None
    notes: list = field(default_factory=list)
    threads: int = 1
    allow_unsafe_ops: bool = False
    manifest: dict = field(default_factory=dict)   # the manifest as read: its sha256, source, variants
    machine: dict = field(default_factory=dict)
    tool_versions: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    schema: str = REPORT_SCHEMA

    @property
    def passed(self) -> bool:
        return self.gate.passed

    @property
    def reference(self) -> bool:
        return self.mode == "reference"

    @property
    def metric(self) -> str:
        """The first summary column's name: what AP means in this mode."""
        return "fidelity AP" if self.reference else "mAP"

    @property
    def cpu_class(self) -> str | None:
        return self.machine.get("cpu_class")

    def to_json(self) -> dict:
        return {"schema": self.schema, "name": self.name, "created": self.created, "mode": self.mode,
                "reference_threshold": self.reference_threshold, "data": self.data.to_json(),
                "gate": self.gate.to_json(), "models": {n: m.to_json() for n, m in self.models.items()},
                "bootstrap": self.bootstrap, "latency": self.latency.to_json() if self.latency else None,
                "notes": list(self.notes), "threads": self.threads, "allow_unsafe_ops": self.allow_unsafe_ops,
                "manifest": self.manifest, "machine": self.machine, "tool_versions": self.tool_versions,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: dict) -> "VerifyReport":
        if d.get("schema") != REPORT_SCHEMA:
            raise DetzooError(f"report schema {d.get('schema')!r} is not {REPORT_SCHEMA!r}")
        g = d["gate"]
        return cls(**{**_known(cls, d), "data": DataInfo.from_json(d["data"]),
                      "gate": Gate(g["metric"], g["max_drop_points"], list(g.get("failed", []))),
                      "models": {n: ModelReport.from_json(m) for n, m in d["models"].items()},
                      "latency": LatencySetup.from_json(d.get("latency"))})

    @classmethod
    def load(cls, folder) -> "VerifyReport":
        """An entry's ``report.json`` (written by ``detzoo verify``)."""
        path = Path(folder) / REPORT_JSON
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, DetzooError) as e:
            raise DetzooError(f"cannot read {path} ({type(e).__name__}); run 'detzoo verify {folder}' "
                              "first") from None


