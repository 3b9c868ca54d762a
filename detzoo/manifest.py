"""``manifest.json``: the single source of truth of an output folder.

It records the source (path, format, sha256), the IO spec, every artifact (file, sha256, opset,
settings, tool versions, calibration ids) and the results. Stages read it, add to it and save it
last, atomically; nothing else re-declares what it holds.

Owns: manifest.json's schema, loading, saving (with the artifacts it records, in one commit) and
the tool versions recorded. Does not touch: the artifacts' contents, measurement.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detzoo.cpu import machine_info  # noqa: F401  (recorded in every manifest)
from detzoo.errors import DetzooError
from detzoo.fsutil import atomic_write_json, commit, roll_forward, sha256_file
from detzoo.source import IOSpec

MANIFEST = "manifest.json"
SCHEMA = "detzoo.manifest/1"
TOOLS = ("detzoo", "tensorflow-cpu", "tensorflow", "tf2onnx", "onnx", "onnxruntime",
         "pycocotools", "faster-coco-eval", "numpy", "opencv-python-headless")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def package_versions(names) -> dict:
    """{name: version} of the installed distributions among ``names``."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def tool_versions() -> dict:
    return {"python": platform.python_version(), **package_versions(TOOLS)}


def _check_member(name: str, where: str) -> str:
    p = Path(name)
    if not name or p.is_absolute() or len(p.parts) != 1 or name in (".", ".."):
        raise DetzooError(f"manifest {where} names {name!r}: expected a plain file name inside the folder "
                          "(no absolute paths, no '..', no sub-folders)")
    return name


@dataclass
class Variant:
    """One artifact in the folder."""

    name: str
    file: str
    precision: str
    sha256: str
    size: int
    opset: int | None = None
    parent: str | None = None
    created: str = field(default_factory=now)
    tool_versions: dict = field(default_factory=tool_versions)
    settings: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    format: str = "onnx"       # onnx, or tflite for a model brought in with ``detzoo add``
    io: dict | None = None     # its own IO spec where it differs from the entry's (fixed size, added models)

    def __post_init__(self):
        _check_member(self.file, f"variant {self.name!r}")
        if self.format not in ("onnx", "tflite"):
            raise DetzooError(f"variant {self.name!r} has format {self.format!r}; expected onnx or tflite")


@dataclass
class Manifest:
    name: str
    source: dict
    io: IOSpec                  # what the entry's artifacts take and give (the zoo contract by default)
    variants: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    machine: dict = field(default_factory=machine_info)
    command: list = field(default_factory=lambda: list(sys.argv))
    created: str = field(default_factory=now)
    schema: str = SCHEMA
    source_io: IOSpec | None = None  # what the source takes and gives, where it differs from ``io``

    def source_spec(self) -> IOSpec:
        return self.source_io or self.io

    def variant_io(self, name: str) -> IOSpec:
        v = self.variants[name]
        return IOSpec.from_dict(v.io) if v.io else self.io

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["io"] = self.io.to_dict()
        d["source_io"] = self.source_io.to_dict() if self.source_io else None
        return d

    def save(self, folder: str | Path, staged: dict | None = None) -> None:
        """Write the manifest; ``staged`` (file name -> temporary in ``folder``) go in place with it."""
        if staged:
            commit(folder, staged, {MANIFEST: self.to_dict()})
        else:
            atomic_write_json(Path(folder) / MANIFEST, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> "Manifest":
        folder = Path(folder)
        path = folder / MANIFEST
        if not folder.is_dir():
            raise DetzooError(f"output folder not found: {folder}")
        roll_forward(folder)  # a commit a killed process left half done
        if not path.is_file():
            raise DetzooError(f"no {MANIFEST} in {folder}: run 'detzoo convert SOURCE --out {folder}' first")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DetzooError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise DetzooError(f"{path} is not a detzoo manifest (expected schema {SCHEMA!r})")
        try:
            variants = {k: Variant(**v) for k, v in d.get("variants", {}).items()}
            return cls(name=d["name"], source=d["source"], io=IOSpec.from_dict(d["io"]), variants=variants,
                       results=d.get("results", {}), machine=d.get("machine", {}), command=d.get("command", []),
                       created=d.get("created", ""), schema=d["schema"],
                       source_io=IOSpec.from_dict(d["source_io"]) if d.get("source_io") else None)
        except (KeyError, TypeError) as e:
            raise DetzooError(f"{path} is malformed: {type(e).__name__}: {e}") from None

    # --- artifacts ---------------------------------------------------------------------------
    def artifact_path(self, folder: str | Path, variant: str) -> Path:
        if variant not in self.variants:
            raise DetzooError(f"manifest has no variant {variant!r}; it has {sorted(self.variants)}")
        return Path(folder) / self.variants[variant].file

    def checked_artifact(self, folder: str | Path, variant: str) -> Path:
        """The artifact's path after checking that it exists and still has the recorded sha256."""
        p = self.artifact_path(folder, variant)
        if not p.is_file():
            raise DetzooError(f"artifact {p.name} listed in the manifest is missing from {folder}")
        digest = sha256_file(p)
        if digest != self.variants[variant].sha256:
            raise DetzooError(f"artifact {p.name} changed: sha256 {digest[:12]}..., manifest records "
                              f"{self.variants[variant].sha256[:12]}... (refusing to verify a different model)")
        return p
