"""Detection-aware parity between a source model and its ONNX artifact.

Raw output tensors are the wrong thing to compare for detectors: a tiny score change reorders
detections and flips which ones survive a threshold. Instead both models run on real images,
detections are matched by class and IoU, and the largest score and box differences among matched
detections are checked, along with any detection that has no counterpart.

Owns: parity tolerances, running both models on the images and the report. Does not touch:
files (the caller records the report), model loading (runners arrive built).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from detzoo.detections import Agreement, agreement
from detzoo.options import MAX_UNMATCHED, PARITY_MIN_SCORE, PARITY_NOISE_FACTOR
from detzoo.errors import DetzooError
from detzoo.images import ImageError, decode_image, list_images
from detzoo.runners import Runner


FLOAT_ATOL = 1e-4
QUANTIZED_STEPS = 2.0
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
              "LayerNormalization"}
NOISE_SEED = 0


@dataclass(frozen=True)
class ParityTolerance:
    """Float sources: fp32 ONNX computes the same arithmetic as TF, so differences come only from
    reduction order and fused kernels. How far that moves detections depends on the network: on the
    trained one-class SSDLite it is about 2e-5, on deep or many-class graphs with seeded weights
    2e-4 to 2e-3 (BENCHMARKS.md), above any fixed atol that still catches bugs. So the default is
    calibrated on the artifact itself: the same images through a copy of it whose every weight is
    moved by one ulp (``perturb_weights``), and through onnxruntime with basic graph optimizations
    only (other kernels and fusions: other summation orders), show this network's float noise,
    and the atols are ``noise_factor`` times the larger, never below 1e-4. A conversion bug (a
    wrong resize mode, a pixel scale of 1/128 for 2/255) moves scores far more, and fails.
    ``noise_factor`` 0 keeps the fixed 1e-4, as do atols given explicitly. Boxes are compared in
    units of image size, so 1e-4 is 0.08 px on a 768-px frame. Detections below ``min_score`` are
    too unstable to compare one by one; 0.3 keeps every detection a user would draw.

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
    noise_factor: float = PARITY_NOISE_FACTOR.default
    noise: dict | None = None          # label -> the noise agreement the atols came from (``calibrated``)

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
        PARITY_NOISE_FACTOR.check(self.noise_factor)

    @property
    def wants_noise(self) -> bool:
        """True while the atols are the float default, to be calibrated on the artifact's own noise."""
        return self._auto and self.noise_factor > 0 and self.noise is None

    def calibrated(self, noise: dict) -> "ParityTolerance":
        """The atols for a network whose float noise is ``noise`` (label -> Agreement of the artifact
        against a perturbed run of it): ``noise_factor`` times the largest, at least 1e-4;
        unmatched detections likewise."""
        f, runs = self.noise_factor, list(noise.values())
        score = max(a.max_score_diff for a in runs)
        box = max(a.max_box_diff for a in runs)
        lost = max(a.unmatched_reference + a.unmatched_candidate for a in runs)
        return replace(self, score_atol=max(FLOAT_ATOL, f * score), box_atol=max(FLOAT_ATOL, f * box),
                       max_unmatched=max(self.max_unmatched, math.ceil(f * lost)),
                       noise={label: a.to_json() for label, a in noise.items()})

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
        elif t.noise is not None:
            noise = "; ".join(f"{label} {n['max_score_diff']:.2e}" for label, n in t.noise.items())
            score = (f"max |score diff| {a.max_score_diff:.2e} (tol {t.score_atol:.2g}: {t.noise_factor:g} x the "
                     f"float noise, at least {FLOAT_ATOL:g}; noise: {noise})")
            box = f"max |box diff| {a.max_box_diff:.2e} of image size (tol {t.box_atol:.2g})"
        else:
            score = f"max |score diff| {a.max_score_diff:.2e} (tol {t.score_atol:g})"
            box = f"max |box diff| {a.max_box_diff:.2e} of image size (tol {t.box_atol:g})"
        return (f"parity on {a.images} images: {a.matched}/{a.reference} detections >= {t.min_score} "
                f"matched, {score}, {box}, unmatched {a.unmatched_reference} source / {a.unmatched_candidate} artifact")


def check_parity(source: Runner, artifact: Runner, images_dir, tolerance: ParityTolerance,
                 limit: int | None = None, feed: tuple[int, int] | None = None,
                 noise: dict | None = None) -> ParityReport:
    """``feed`` (h, w): both models get each image resized to it with OpenCV first, as the zoo's
    runner feeds a fixed-size artifact; boxes are compared on the original image. ``noise``:
    label -> a perturbed run of the artifact (``noise_runners``), for a tolerance that
    ``wants_noise``."""
    files = list_images(images_dir)[:limit]
    skipped, decoded = [], []
    for p in files:
        try:
            decoded.append((p.name, decode_image(p)))
        except ImageError as e:
            skipped.append(str(e))
    if not decoded:
        raise DetzooError(f"no usable images for the parity check in {images_dir}")
    return compare_runners(source, artifact, decoded, tolerance, feed, skipped, noise)


def compare_runners(source: Runner, artifact: Runner, images, tolerance: ParityTolerance,
                    feed: tuple[int, int] | None = None, skipped: list | None = None,
                    noise: dict | None = None) -> ParityReport:
    """Parity of two built runners on ``images``, (key, decoded image) pairs taken one at a time
    (quantize checks its fp32 batch-1 variant with it); ``feed`` as in ``check_parity``. With a
    ``noise`` (label -> runner) and a tolerance that ``wants_noise``, the atols are calibrated on
    the artifact's detections against each noise runner's, on the same images."""
    calibrate = bool(noise) and tolerance.wants_noise
    noise_pairs = {label: [] for label in noise or {}}

    def pairs():
        for key, img in images:
            hw = img.shape[:2]
            if feed is not None:
                from detzoo.runners import resize_like_cv2

                img = resize_like_cv2(img, *feed)
            got = artifact.detect(img, image_hw=hw)
            if calibrate:
                for label, runner in noise.items():
                    noise_pairs[label].append((key, hw, got, runner.detect(img, image_hw=hw)))
            yield key, hw, source.detect(img, image_hw=hw), got

    a = agreement(pairs(), tolerance.min_score, tolerance.iou)
    if calibrate:
        tolerance = tolerance.calibrated({label: agreement(p, tolerance.min_score, tolerance.iou)
                                          for label, p in noise_pairs.items()})
    return ParityReport(a, tolerance, list(skipped or []))


def perturb_weights(model, seed: int = NOISE_SEED):
    """A copy of the ONNX ``model`` with every weight moved by one ulp, up or down by a seeded draw
    per element; zeros stay zero. Weights are the float tensors (initializers or Constant values,
    in subgraphs too) that a layer consumes: ``WEIGHT_OPS``. Other float tables are left alone:
    moving a resize's coordinate grid or a threshold by one ulp perturbs the input or a decision,
    not the arithmetic (on the TFLite SSD's wrapper, the grid alone moved scores 50x more than
    every weight did)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graphs, weights = [], set()

    def collect(graph):
        graphs.append(graph)
        for node in graph.node:
            if node.op_type in WEIGHT_OPS:
                weights.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        collect(g)

    def moved(t, name):
        x = numpy_helper.to_array(t)
        if name not in weights or x.dtype.kind != "f":
            return None
        up = rng.random(x.shape) < 0.5
        y = np.where(x == 0, x, np.where(up, np.nextafter(x, np.inf), np.nextafter(x, -np.inf)))
        return numpy_helper.from_array(y.astype(x.dtype), t.name)

    collect(model.graph)
    for graph in graphs:
        for t in graph.initializer:
            y = moved(t, t.name)
            if y is not None:
                t.CopyFrom(y)
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        y = moved(attr.t, node.output[0])
                        if y is not None:
                            attr.t.CopyFrom(y)
    return model


@contextlib.contextmanager
def noise_runners(path, io, threads: int = 1, allow_unsafe_ops: bool = False):
    """label -> OrtRunner, two perturbed runs of the ONNX model at ``path``: its ``perturb_weights``
    copy (written to a temporary folder, removed afterwards) and the model itself at onnxruntime's
    basic optimization level (the artifact is checked, and run, at level all)."""
    import onnx

    from detzoo.runners import OrtRunner

    with tempfile.TemporaryDirectory(prefix="detzoo-noise-") as tmp, contextlib.ExitStack() as stack:
        moved = Path(tmp) / Path(path).name
        onnx.save(perturb_weights(onnx.load(str(path))), str(moved))
        yield {"one-ulp weights": stack.enter_context(
                   OrtRunner(moved, io, threads, label="one-ulp weights", allow_unsafe_ops=allow_unsafe_ops)),
               "onnxruntime basic optimizations": stack.enter_context(
                   OrtRunner(path, io, threads, label="basic optimizations", optimization_level="basic",
                             allow_unsafe_ops=allow_unsafe_ops))}
