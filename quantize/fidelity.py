"""Fidelity of a reduced-precision candidate to a reference model, on held-out images.

The reference's detections scoring >= 0.5 are ground truth; the candidate's full detection list is
scored against them by pycocotools (``detzoo.coco.fidelity``). AP 1.0 means the candidate finds
every confident reference box at the same place, ranked the same. The reference is the fp32
artifact, which convert has already checked against the source (convert/parity.py's tolerance).

Owns ``FidelityProbe`` (the reference's detections, once) and ``Fidelity``. Must not touch the
models it scores, nor the scoring itself (detzoo.coco's ``fidelity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detzoo.detections import Detections
from detzoo.errors import DetzooError
from detzoo.images import ImageError, decode_image, list_images
from detzoo.runners import OrtRunner
from detzoo.source import IOSpec

THRESHOLD = 0.5


@dataclass(frozen=True)
class Fidelity:
    """AP and AP50 are None when the reference detects nothing >= THRESHOLD (nothing to compare)."""

    ap: float | None
    ap50: float | None
    images: int
    reference_boxes: int

    @property
    def drop_points(self) -> float | None:
        """AP points lost against the reference (whose own fidelity is 1.0 by definition)."""
        return None if self.ap is None else round((1.0 - self.ap) * 100.0, 3)

    def to_json(self) -> dict:
        r = (lambda v: None if v is None else round(v, 4))
        return {"fidelity_ap": r(self.ap), "fidelity_ap50": r(self.ap50), "drop_points": self.drop_points,
                "images": self.images, "reference_boxes": self.reference_boxes, "threshold": THRESHOLD}


class FidelityProbe:
    """Reference detections computed once; ``measure`` scores any candidate ONNX file against them."""

    def __init__(self, reference: Path, io: IOSpec, images: list[Path], threads: int = 1,
                 allow_unsafe_ops: bool = False):
        self.io, self.threads, self.allow_unsafe_ops = io, threads, allow_unsafe_ops
        self.images: list[tuple[int, Path]] = []
        self.skipped: list[str] = []
        self.sizes: dict[int, tuple[int, int]] = {}
        self.reference: dict[int, Detections] = {}
        with OrtRunner(reference, io, threads, allow_unsafe_ops=allow_unsafe_ops) as run:
            for p in images:  # one decoded image at a time: hundreds of check images stay cheap
                try:
                    img = decode_image(p)
                except ImageError as e:
                    self.skipped.append(str(e))
                    continue
                k = len(self.images) + 1
                self.images.append((k, p))
                self.sizes[k] = img.shape[:2]
                self.reference[k] = run.detect(img)
        if not self.images:
            raise DetzooError(f"no usable check images among {len(images)} given")
        self.reference_boxes = sum(len(d.above(THRESHOLD)) for d in self.reference.values())

    @property
    def names(self) -> list[str]:
        return [p.name for _, p in self.images]

    def detect_all(self, model: Path) -> dict[int, Detections]:
        with OrtRunner(model, self.io, self.threads, allow_unsafe_ops=self.allow_unsafe_ops) as run:
            return {k: run.detect(decode_image(p)) for k, p in self.images}

    def measure(self, model: Path) -> Fidelity:
        from detzoo.coco import fidelity

        if self.reference_boxes == 0:
            return Fidelity(None, None, len(self.images), 0)
        res = fidelity(self.reference, self.detect_all(model), self.sizes, threshold=THRESHOLD)
        return Fidelity(max(res.map, 0.0), max(res.ap50, 0.0), len(self.images), self.reference_boxes)


def check_image_paths(folder: Path, limit: int | None = None) -> list[Path]:
    files = list_images(folder)
    return files[:limit] if limit else files
