"""Detection-aware parity between a source model and its ONNX artifact.

Raw output tensors are the wrong thing to compare for detectors: a tiny score change reorders
detections and flips which ones survive a threshold. Instead both models run on real images,
detections are matched by class and IoU, and the largest score and box differences among matched
detections are checked, along with any detection that has no counterpart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from detzoo.detections import Agreement, agreement
from detzoo.errors import DetzooError
from detzoo.images import ImageError, decode_image, list_images
from detzoo.runners import Runner


@dataclass(frozen=True)
class ParityTolerance:
    """Defaults: fp32 ONNX computes the same arithmetic as TF, so differences come only from
    reduction order and fused kernels (measured about 1e-7 on scores of the real SSDLite graph).
    1e-4 leaves three orders of magnitude of headroom yet catches real conversion bugs (a wrong
    resize or box decode moves scores and boxes by 1e-2 or more). Boxes are compared in units of
    image size, so 1e-4 is 0.08 px on a 768-px frame. Detections below ``min_score`` are too
    unstable to compare one by one; 0.3 keeps every detection a user would draw."""

    score_atol: float = 1e-4
    box_atol: float = 1e-4
    min_score: float = 0.3
    iou: float = 0.5
    max_unmatched: int = 0

    def __post_init__(self):
        for name in ("score_atol", "box_atol"):
            if not getattr(self, name) > 0:
                raise DetzooError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_score < 1:
            raise DetzooError(f"--parity-min-score must be in [0, 1), got {self.min_score}")
        if not 0 < self.iou <= 1:
            raise DetzooError(f"parity IoU must be in (0, 1], got {self.iou}")
        if self.max_unmatched < 0:
            raise DetzooError(f"--max-unmatched must be >= 0, got {self.max_unmatched}")


@dataclass(frozen=True)
class ParityReport:
    agreement: Agreement
    tolerance: ParityTolerance
    skipped_images: list

    @property
    def passed(self) -> bool:
        a, t = self.agreement, self.tolerance
        return (a.max_score_diff <= t.score_atol and a.max_box_diff <= t.box_atol
                and a.unmatched_reference + a.unmatched_candidate <= t.max_unmatched)

    def to_json(self) -> dict:
        return {"passed": self.passed, **self.agreement.to_json(), "tolerance": asdict(self.tolerance),
                "skipped_images": self.skipped_images}

    def summary(self) -> str:
        a = self.agreement
        return (f"parity on {a.images} images: {a.matched}/{a.reference} detections >= {self.tolerance.min_score} "
                f"matched, max |score diff| {a.max_score_diff:.2e} (tol {self.tolerance.score_atol:g}), "
                f"max |box diff| {a.max_box_diff:.2e} of image size (tol {self.tolerance.box_atol:g}), "
                f"unmatched {a.unmatched_reference} source / {a.unmatched_candidate} artifact")


def check_parity(source: Runner, artifact: Runner, images_dir, tolerance: ParityTolerance,
                 limit: int | None = None, feed: tuple[int, int] | None = None) -> ParityReport:
    """``feed`` (h, w): both models get each image resized to it with OpenCV first, as the zoo's
    runner feeds a fixed-size artifact; boxes are compared on the original image."""
    files = list_images(images_dir)[:limit]
    skipped, decoded = [], []
    for p in files:
        try:
            decoded.append((p.name, decode_image(p)))
        except ImageError as e:
            skipped.append(str(e))
    if not decoded:
        raise DetzooError(f"no usable images for the parity check in {images_dir}")

    def pairs():
        for key, img in decoded:
            hw = img.shape[:2]
            if feed is not None:
                from detzoo.runners import resize_like_cv2

                img = resize_like_cv2(img, *feed)
            yield key, hw, source.detect(img, image_hw=hw), artifact.detect(img, image_hw=hw)

    return ParityReport(agreement(pairs(), tolerance.min_score, tolerance.iou), tolerance, skipped)
