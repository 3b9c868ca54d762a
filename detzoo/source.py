"""Model sources: find the model in what the user gave, hash it, load it, and the IO spec types.

Accepted: a TF1 Object Detection API frozen graph (the ``.pb``, its export folder or the zoo
``.tar.gz``), a TF2 SavedModel (its folder or an export folder holding ``saved_model/``), or a
``.tflite`` model. TensorFlow is imported inside functions so the CLI starts instantly.

Owns: ``ModelFormat``, ``TensorSpec``/``IOSpec``, opening and hashing a source (tarballs
extracted safely), loading TF graphs and TFLite interpreters. Does not touch: IO detection
(convert/iodetect.py), safety scans (detzoo.safety), conversion.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detzoo.errors import DetzooError
from detzoo.fsutil import sha256_path

# Output roles in the zoo's contract order; artifacts keep this order.
OUTPUT_ROLES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
TFLITE_MAGIC = b"TFL3"


class ModelFormat(str, enum.Enum):
    FROZEN_GRAPH = "frozen_graph"
    SAVED_MODEL = "saved_model"
    TFLITE = "tflite"


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list  # ints, None for unknown dimensions

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        if len(self.shape) == 4 and all(isinstance(d, int) and d > 0 for d in self.shape[1:3]):
            return int(self.shape[1]), int(self.shape[2])
        return None


@dataclass
class IOSpec:
    """What a caller must feed and what comes out, in the zoo's contract.

    ``outputs`` maps each role in OUTPUT_ROLES to the model's tensor name. ``resize`` is the
    (height, width) the caller resizes to, or None when the graph resizes inside (OD API graphs
    and every artifact that keeps the contract). ``resize_with`` says how: ``tf1`` is TF1's
    ``resize_images`` bilinear, without half-pixel centres, which the OD API's image resizers call
    in TF1 and TF2 alike (a TFLite export expects it); ``tf`` is TF2's ``tf.image.resize`` with
    half-pixel centres (the manifests before 2026-12-03 say it for TFLite sources; their
    artifacts compute it); the contract wrapper computes either inside the graph; ``cv2`` is
    OpenCV's INTER_LINEAR on uint8, the zoo runner's resize (fixed-size variants are fed that way). Float inputs are fed as
    ``pixel * scale + offset``. ``class_offset`` is added to the raw class ids to get dataset
    category ids (1 for TFLite post-processing, whose ids are 0-based).
    """

    input: TensorSpec
    outputs: dict
    resize: list | None = None
    scale: float = 1.0
    offset: float = 0.0
    class_offset: int = 0
    num_classes: int | None = None
    label_map: dict | None = None
    colour_order: str = "RGB"
    box_format: str = "normalized [ymin, xmin, ymax, xmax]"
    resize_with: str = "tf"

    def __post_init__(self):
        if isinstance(self.input, dict):
            self.input = TensorSpec(**self.input)
        missing = [r for r in OUTPUT_ROLES if r not in self.outputs]
        if missing:
            raise DetzooError(f"IO spec lacks output roles {missing}; expected {list(OUTPUT_ROLES)}")
        self.outputs = {r: self.outputs[r] for r in OUTPUT_ROLES}
        if self.label_map:
            self.label_map = {int(k): str(v) for k, v in self.label_map.items()}

    @property
    def output_names(self) -> list[str]:
        return [self.outputs[r] for r in OUTPUT_ROLES]

    @property
    def preprocessing(self) -> str:
        steps = []
        if self.resize:
            how = {"cv2": "OpenCV INTER_LINEAR", "tf1": "TF1 bilinear, no half-pixel centres"}.get(
                self.resize_with, "TF bilinear, half-pixel centres")
            steps.append(f"resize to {self.resize[0]}x{self.resize[1]} ({how})")
        if self.input.dtype.startswith("float"):
            steps.append(f"as float32: pixel * {self.scale:g} + {self.offset:g}")
        return "; ".join(steps) or "none (the graph resizes and normalizes inside)"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "IOSpec":
        d = {k: v for k, v in d.items() if k != "preprocessing"}
        return cls(**d)


@dataclass
class ModelSource:
    """A resolved model: ``path`` is the model file or SavedModel folder to load."""

    origin: Path
    path: Path
    format: ModelFormat
    sha256: str = ""
    size: int = 0
    _tmp: object = field(default=None, repr=False)

    def describe(self) -> dict:
        # Absolute: verify and reverify may run from another working directory.
        return {"path": str(self.origin.resolve()), "model": str(self.path) if self.path != self.origin else None,
                "format": self.format.value, "sha256": self.sha256, "size": self.size}


def _tree_size(p: Path) -> int:
    return sum(q.stat().st_size for q in p.rglob("*") if q.is_file()) if p.is_dir() else p.stat().st_size


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive, refusing absolute paths, ``..``, links and device files."""
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                name = Path(m.name)
                if name.is_absolute() or ".." in name.parts:
                    raise DetzooError(f"archive {archive.name} has an unsafe member path {m.name!r}; "
                                      "expected relative paths inside the archive")
                if not (m.isfile() or m.isdir()):
                    raise DetzooError(f"archive {archive.name} has a link or special file {m.name!r}; "
                                      "expected regular files and folders only")
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DetzooError(f"cannot read archive {archive}: {e}") from None


def _find_in_folder(folder: Path) -> tuple[Path, ModelFormat] | None:
    if (folder / "saved_model.pb").is_file():
        return folder, ModelFormat.SAVED_MODEL
    if (folder / "frozen_inference_graph.pb").is_file():
        return folder / "frozen_inference_graph.pb", ModelFormat.FROZEN_GRAPH
    if (folder / "saved_model" / "saved_model.pb").is_file():
        return folder / "saved_model", ModelFormat.SAVED_MODEL
    tflites = sorted(folder.glob("*.tflite"))
    if len(tflites) == 1:
        return tflites[0], ModelFormat.TFLITE
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subdirs) == 1:  # zoo tarballs hold one top folder
        return _find_in_folder(subdirs[0])
    return None


def _classify_file(path: Path) -> ModelFormat:
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix == ".tflite" or head[4:8] == TFLITE_MAGIC:
        return ModelFormat.TFLITE
    if path.suffix == ".pb":
        if path.name == "saved_model.pb":
            raise DetzooError(f"{path} is a SavedModel proto; pass its folder {path.parent} instead")
        return ModelFormat.FROZEN_GRAPH
    raise DetzooError(f"unsupported model file {path.name}: expected a frozen graph .pb, a .tflite, "
                      "a SavedModel folder, or a zoo .tar.gz")


@contextlib.contextmanager
def open_source(origin: str | os.PathLike, expected_sha256: str | None = None) -> Iterator[ModelSource]:
    """Resolve ``origin`` to a loadable model; archives are extracted to a temporary folder."""
    origin = Path(origin)
    if not origin.exists():
        raise DetzooError(f"model not found: {origin}")
    with contextlib.ExitStack() as stack:
        root = origin
        if origin.is_file() and (origin.name.endswith((".tar.gz", ".tgz", ".tar"))):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="detzoo-src-")))
            safe_extract(origin, tmp)
            root = tmp
        if root.is_dir():
            found = _find_in_folder(root)
            if found is None:
                hint = ""
                if (root / "pipeline.config").is_file() and (root / "checkpoint").is_dir():
                    hint = ("; it holds pipeline.config and checkpoint/ (a training checkpoint): export it first "
                            "with the Object Detection API's exporter_main_v2.py")
                raise DetzooError(f"no model in {origin}: expected frozen_inference_graph.pb, saved_model.pb, "
                                  f"saved_model/ or one .tflite{hint}")
            path, fmt = found
        else:
            path, fmt = root, _classify_file(root)
        src = ModelSource(origin=origin, path=path, format=fmt,
                          sha256=sha256_path(origin), size=_tree_size(origin))
        if expected_sha256 and src.sha256 != expected_sha256:
            raise DetzooError(f"source {origin} changed: sha256 {src.sha256[:12]}..., "
                              f"manifest records {expected_sha256[:12]}...")
        yield src


# --- loading --------------------------------------------------------------------------------

def _is_saved_model_proto(data: bytes) -> bool:
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(data)
    except Exception:  # any parse failure means: not a SavedModel proto
        return False
    return bool(sm.meta_graphs) and any(m.graph_def.node for m in sm.meta_graphs)


def load_graph_def(path: Path):
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    data = path.read_bytes()
    gd = tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(data)
        problem = None if gd.node else "holds no graph nodes"
    except (DecodeError, RuntimeWarning, ValueError):
        problem = "is not a readable TensorFlow GraphDef"
    if problem:
        if data and _is_saved_model_proto(data):
            raise DetzooError(f"{path.name} is a SavedModel proto, not a frozen graph; "
                              "pass the SavedModel folder that holds it")
        raise DetzooError(f"{path.name} {problem}: expected a frozen_inference_graph.pb")
    return gd


def load_saved_model_signature(path: Path, signature: str = "serving_default"):
    """Return the MetaGraphDef of a SavedModel and its ``signature`` (checked to exist)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString((path / "saved_model.pb").read_bytes())
    except DecodeError:
        raise DetzooError(f"{path}/saved_model.pb is not a readable SavedModel proto") from None
    metas = [m for m in sm.meta_graphs if "serve" in m.meta_info_def.tags] or list(sm.meta_graphs)
    if not metas:
        raise DetzooError(f"SavedModel {path} has no meta graph")
    meta = metas[0]
    if signature not in meta.signature_def:
        raise DetzooError(f"SavedModel {path} has no signature {signature!r}; it has "
                          f"{sorted(meta.signature_def) or 'none'}")
    if not (path / "variables").is_dir() and any(n.op.startswith(("VarHandleOp", "RestoreV2"))
                                                  for n in meta.graph_def.node):
        raise DetzooError(f"SavedModel {path} has no variables/ folder but its graph reads variables")
    return meta, meta.signature_def[signature]


def tflite_interpreter(path: Path, threads: int = 1):
    import warnings

    import tensorflow as tf

    try:
        # model_content (not model_path) makes TFLite verify the flatbuffer: a corrupt file
        # given by path crashes the process instead of raising.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interp = tf.lite.Interpreter(model_content=path.read_bytes(), num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        custom = re.search(r"unresolved custom op: ([^.\s]+)", str(e))
        if custom:
            raise DetzooError(f"{path.name} uses the custom op {custom.group(1)!r}; detzoo converts TFLite "
                              "models whose only custom op is TFLite_Detection_PostProcess") from None
        raise DetzooError(f"{path.name} is not a loadable TFLite model: {first}") from None
    return interp


def tflite_precision(interp) -> str:
    """int8 when any tensor carries quantization parameters or is int8. A uint8 input alone is no
    sign: float detectors often take uint8 pixels and cast inside."""
    import numpy as np

    quantized = fp16 = False
    for t in interp.get_tensor_details():
        q = t.get("quantization_parameters") or {}
        scales = np.asarray(q.get("scales", ()))
        quantized |= bool(scales.size and np.any(scales != 0)) or t["dtype"] == np.int8
        fp16 |= t["dtype"] == np.float16
    return "int8" if quantized else "fp16" if fp16 else "fp32"
