"""Calibration images fed exactly as evaluation feeds them, and tensor ranges in bounded memory.

Every frame goes through ``detzoo.images.decode_image`` and ``detzoo.runners.preprocess``, the
same two functions verify and the parity check use, so the int8 ranges describe the tensors the
model will see. Images are decoded one at a time, and onnxruntime's calibrater is driven in
chunks (its histogram and min/max collectors merge across calls), so hundreds of images need the
memory of one chunk of activations, not of all of them.

Owns the calibration pass (``run``, configured by ``CalibrationConfig``: onnxruntime's range
cache for the ops to quantize), picking the images, and how they are fed (``fed_io``,
``ImageReader``). Must not touch the model: the calibrator augments a copy in a temporary folder.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detzoo.errors import DetzooError
from detzoo.fsutil import sha256_file
from detzoo.images import ImageError, decode_image, list_images
from detzoo.runners import preprocess
from detzoo.source import IOSpec

CHUNK = 8  # images whose activations min/max calibration holds at once
# Histogram methods take one image per call: onnxruntime stacks a call's tensors with np.asarray,
# which fails when a tensor's shape changes between images, and merging per image is no slower.


class CalibMethod(str, enum.Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"

    @property
    def ort(self):
        from onnxruntime.quantization import CalibrationMethod

        return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}[self.value]


@dataclass(frozen=True)
class CalibrationImages:
    """The usable images picked for calibration, and what was skipped or overlaps evaluation."""

    folder: Path
    files: list
    skipped: list = field(default_factory=list)
    overlap: list = field(default_factory=list)  # names whose content is also among the check images
    sizes: dict = field(default_factory=dict)    # "WxH" -> how many of the images have that size

    @property
    def ids(self) -> list[str]:
        return [p.name for p in self.files]

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in self.files:
            h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
        return h.hexdigest()

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "count": len(self.files), "ids": self.ids, "sha256": self.digest(),
                "skipped": self.skipped, "overlap_with_check_images": self.overlap, "sizes": self.sizes}


def pick_calibration_images(folder: Path, count: int | None, check_files: list[Path] = (),
                            at_most: int | None = None) -> CalibrationImages:
    """The first ``count`` decodable images of ``folder`` in name order (when None: up to ``at_most``).

    Raises when the folder has no images or fewer usable ones than asked; an image whose content
    also appears among ``check_files`` is reported in ``overlap`` (the caller warns).
    """
    if count is not None and count < 1:
        raise DetzooError(f"--calib-count must be >= 1, got {count}")
    files = list_images(folder)
    usable, skipped, sizes = [], [], {}
    limit = count if count is not None else at_most
    for p in files:
        if limit is not None and len(usable) == limit:
            break
        try:
            h, w = decode_image(p).shape[:2]
        except ImageError as e:
            skipped.append(str(e))
            continue
        usable.append(p)
        sizes[f"{w}x{h}"] = sizes.get(f"{w}x{h}", 0) + 1
    if not usable:
        raise DetzooError(f"calibration folder {folder} has no usable images ({len(skipped)} could not be decoded)")
    if count is not None and len(usable) < count:
        raise DetzooError(f"calibration folder {folder} has {len(usable)} usable images, fewer than --calib-count "
                          f"{count} ({len(files)} image files, {len(skipped)} undecodable)")
    check_digests = {sha256_file(p) for p in check_files}
    overlap = [p.name for p in usable if sha256_file(p) in check_digests] if check_digests else []
    return CalibrationImages(Path(folder), usable, skipped, overlap, dict(sorted(sizes.items())))


def model_input(model) -> tuple[str, int, list]:
    """(name, ONNX element type, dims with None for free ones) of the model's single input."""
    inp = model.graph.input[0]
    t = inp.type.tensor_type
    return inp.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def check_feedable(model, io: IOSpec, image: np.ndarray) -> None:
    """Raise, saying why, when a preprocessed image cannot be fed to the model's input."""
    import onnx

    name, elem, dims = model_input(model)
    batch = preprocess(image, io)
    want = onnx.helper.tensor_dtype_to_np_dtype(elem) if elem else None
    shape = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    got = f"{batch.dtype} {list(batch.shape)}"
    if want is not None and batch.dtype != want:
        raise DetzooError(f"calibration images cannot feed input {name!r}: it takes {np.dtype(want)} {shape}, "
                          f"the manifest's preprocessing ({io.preprocessing}) gives {got}")
    if len(dims) != batch.ndim or any(d is not None and d != s for d, s in zip(dims, batch.shape)):
        raise DetzooError(f"calibration images cannot feed input {name!r}: it takes {shape}, "
                          f"the manifest's preprocessing ({io.preprocessing}) gives {got}")


def fed_io(io: IOSpec, feed_size) -> IOSpec:
    """``io`` with the zoo's feeding in front: an OpenCV resize to ``feed_size`` before the model."""
    if not feed_size:
        return io
    return IOSpec.from_dict({**io.to_dict(), "resize": list(feed_size), "resize_with": "cv2"})


class ImageReader:
    """onnxruntime ``CalibrationDataReader`` over image files, decoding lazily, at most ``limit`` per pass."""

    def __init__(self, files: list[Path], io: IOSpec, input_name: str, start: int = 0, limit: int | None = None):
        self.files, self.io, self.input_name = list(files), io, input_name
        self.start = self.pos = start
        self.stop = len(self.files) if limit is None else min(len(self.files), start + limit)

    def get_next(self):
        if self.pos >= self.stop:
            return None
        p = self.files[self.pos]
        self.pos += 1
        return {self.input_name: preprocess(decode_image(p), self.io)}

    def __iter__(self):
        return iter(self.get_next, None)

    def __len__(self):
        return self.stop - self.start


@dataclass(frozen=True)
class CalibrationConfig:
    """How ranges are collected: onnxruntime's method, its calibrator options and the chunk size."""

    method: CalibMethod = CalibMethod.MINMAX
    options: dict = field(default_factory=dict)  # create_calibrator's extra_options (Int8Settings.calibrator_options)
    chunk: int | None = None                     # images per collect_data call; None: CHUNK for minmax, else 1

    def __post_init__(self):
        object.__setattr__(self, "method", CalibMethod(self.method))


def run(model_path: Path, images: CalibrationImages, io: IOSpec, op_types: list[str], cache_path: Path,
        config: CalibrationConfig = CalibrationConfig()) -> Path:
    """Compute tensor ranges over all calibration images, ``chunk`` at a time; save onnxruntime's cache."""
    method, chunk = config.method, config.chunk
    if chunk is None:
        chunk = CHUNK if method is CalibMethod.MINMAX else 1
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    name = model_input(onnx.load(str(model_path), load_external_data=False))[0]
    with tempfile.TemporaryDirectory(prefix="detzoo-calib-") as tmp, _quiet():
        cal = create_calibrator(Path(model_path), op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=method.ort, extra_options=config.options)
        for start in range(0, len(images.files), chunk):
            cal.collect_data(ImageReader(images.files, io, name, start, chunk))
        save_tensors_data(snap_ranges(cal.compute_data()), cache_path)
        del cal
    return cache_path


SNAP_BITS = 8  # ranges rounded outward to 1/256 of their magnitude's power of two


def nonfinite(cache_path: Path) -> list[str]:
    """Tensors whose calibrated range is not finite: empty on every calibration image (min and max
    of nothing are +inf and -inf: FPNLite's post-processing has such Expands) or holding inf or NaN.
    No int8 scale represents them, and snapped they became NaN, on which onnxruntime's quantizer
    stops with an assertion ("scale issue"); the nodes reading or writing them stay float."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    bad = []
    for name, td in load_tensors_data(cache_path).data.items():
        rng = [np.asarray(v, np.float64) for v in (getattr(td, "range_value", None) or ())]
        if rng and not all(np.isfinite(v).all() for v in rng):
            bad.append(name)
    return sorted(bad)


def snap_ranges(data):
    """Round every calibrated range outward onto a coarse grid (widening it by < 0.4%).

    onnxruntime's float kernels differ between CPU families in the last bits, and so do the
    activation extremes they produce; on the grid those differences almost never change a scale,
    so the int8 bytes do not depend on which CPU calibrated them.
    """
    for td in data.data.values() if hasattr(data, "data") else ():
        if not hasattr(td, "lowest"):
            continue
        lo, hi = np.asarray(td.lowest, np.float64), np.asarray(td.highest, np.float64)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            continue  # left as calibrated: ``nonfinite`` names it, and its nodes stay float
        mag = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), np.finfo(np.float32).tiny)
        step = np.exp2(np.floor(np.log2(mag)) - SNAP_BITS)
        td.lowest = (np.floor(lo / step) * step).astype(np.asarray(td.lowest).dtype)
        td.highest = (np.ceil(hi / step) * step).astype(np.asarray(td.highest).dtype)
    return data


class _quiet:
    """onnxruntime's calibrater prints progress and logs warnings meant for notebooks."""

    def __enter__(self):
        import contextlib
        import io as _io

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(_io.StringIO()))
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self._level)
        self._stack.close()
