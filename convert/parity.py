"""Detection-aware parity between a source model and its ONNX artifact.

Raw output tensors are the wrong thing to compare for detectors: a tiny score change reorders
detections and flips which ones survive a threshold. Instead both models run on real images,
detections are matched by class and IoU, and the largest score and box differences among matched
detections are checked, along with any detection that has no counterpart.

Owns: parity tolerances, running both models on the images and the report. Does not touch:
files (the caller records the report), model loading (runners arrive built).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from detzoo.detections import Agreement, agreement
from detzoo.options import MAX_UNMATCHED, PARITY_MIN_SCORE
from detzoo.errors import DetzooError
from detzoo.images import ImageError, decode_image, list_images
from detzoo.runners import Runner


FLOAT_ATOL = 1e-4
QUANTIZED_STEPS = 2.0


@dataclass(frozen=True)
class ParityTolerance:
    """Float sources: fp32 ONNX computes the same arithmetic as TF, so differences come only from
    reduction order and fused kernels (measured about 1e-7 on scores of the real SSDLite graph).
    1e-4 leaves three orders of magnitude of headroom yet catches real conversion bugs (a wrong
    resize or box decode moves scores and boxes by 1e-2 or more). Boxes are compared in units of
    image size, so 1e-4 is 0.08 px on a 768-px frame. Detections below ``min_score`` are too
    unstable to compare one by one; 0.3 keeps every detection a user would draw.

    Integer sources: their scores and box encodings live on a grid (a uint8 score moves by 1/256),
    and onnxruntime requantizes with float multipliers where TFLite uses fixed-point ones, so one
    rounding apart is expected and a float tolerance says nothing. Leaving both atols unset means
    "the source's default": 1e-4, or ``QUANTIZED_STEPS`` of the source's own output quantization
    steps (``in_steps``), which the report states in steps."""

    score_atol: float | None = None
    box_atol: float | None = None
    min_score: float = PARITY_MIN_SCORE.default
    iou: float = 0.5
    max_unmatched: int = MAX_UNMATCHED.default
    steps: float | None = None        # the atols are this many output quantization steps
    score_step: float | None = None
    box_step: float | None = None

    def __post_init__(self):
        auto = self.score_atol is None and self.box_atol is None and self.steps is None
        object.__setattr__(self, "_auto", auto)
        for name in ("score_atol", "box_atol"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, FLOAT_ATOL)
            if not getattr(self, name) > 0:
                raise DetzooError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.min_score < 1:
            raise DetzooError(f"--parity-min-score must be in [0, 1), got {self.min_score}")
        if not 0 < self.iou <= 1:
            raise DetzooError(f"parity IoU must be in (0, 1], got {self.iou}")
        MAX_UNMATCHED.check(self.max_unmatched)

    def for_source(self, steps) -> "ParityTolerance":
        """The tolerance for a source whose output quantization is ``steps`` (an ``OutputSteps``,
        None for float): unset atols become ``QUANTIZED_STEPS`` of its steps."""
        if steps is None or not self._auto:
            return self
        return ParityTolerance(score_atol=QUANTIZED_STEPS * steps.score_step,
                               box_atol=QUANTIZED_STEPS * steps.box_step, min_score=self.min_score,
                               iou=self.iou, max_unmatched=self.max_unmatched, steps=QUANTIZED_STEPS,
                               score_step=steps.score_step, box_step=steps.box_step)

    def to_json(self) -> dict:
        return asdict(self)


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
        t = self.tolerance
        steps = ({"score_diff_steps": self.agreement.max_score_diff / t.score_step,
                  "box_diff_steps": self.agreement.max_box_diff / t.box_step} if t.steps else {})
        return {"passed": self.passed, **self.agreement.to_json(), **steps, "tolerance": t.to_json(),
                "skipped_images": self.skipped_images}

    def summary(self) -> str:
        a, t = self.agreement, self.tolerance
        if t.steps:
            score = (f"max |score diff| {a.max_score_diff:.2e} = {a.max_score_diff / t.score_step:.2f} steps "
                     f"(tol {t.steps:g} steps of {t.score_step:.3g})")
            box = (f"max |box diff| {a.max_box_diff:.2e} of image size = {a.max_box_diff / t.box_step:.2f} steps "
                   f"(tol {t.steps:g} steps of {t.box_step:.3g}; the source's output quantization)")
        else:
            score = f"max |score diff| {a.max_score_diff:.2e} (tol {t.score_atol:g})"
            box = f"max |box diff| {a.max_box_diff:.2e} of image size (tol {t.box_atol:g})"
        return (f"parity on {a.images} images: {a.matched}/{a.reference} detections >= {t.min_score} "
                f"matched, {score}, {box}, unmatched {a.unmatched_reference} source / {a.unmatched_candidate} artifact")


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
    return compare_runners(source, artifact, decoded, tolerance, feed, skipped)


def compare_runners(source: Runner, artifact: Runner, images, tolerance: ParityTolerance,
                    feed: tuple[int, int] | None = None, skipped: list | None = None) -> ParityReport:
    """Parity of two built runners on ``images``, (key, decoded image) pairs taken one at a time
    (quantize checks its fp32 batch-1 variant with it); ``feed`` as in ``check_parity``."""

    def pairs():
        for key, img in images:
            hw = img.shape[:2]
            if feed is not None:
                from detzoo.runners import resize_like_cv2

                img = resize_like_cv2(img, *feed)
            yield key, hw, source.detect(img, image_hw=hw), artifact.detect(img, image_hw=hw)

    return ParityReport(agreement(pairs(), tolerance.min_score, tolerance.iou), tolerance, list(skipped or []))
