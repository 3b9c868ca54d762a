"""Checks of a built variant against what it was built from, as the manifest records them.

Owns the fp32 batch-1 variant's parity (convert's detection-aware parity, detzoo.convert.parity,
on the check images), the batch Loop check (the any-batch artifact against its batch-1 build,
row by row) and the speed probe (int8 against fp32 here). Must not touch artifacts or the
manifest (core.py and install.py write them), nor tolerances: ParityTolerance is convert's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from detzoo.errors import CheckFailed
from detzoo.images import decode_image
from detzoo.runners import preprocess

SPEED_RUNS = 15


def parity(reference: Path, candidate: Path, io, images: list[Path], threads: int = 1,
           allow_unsafe_ops: bool = False):
    """convert's parity check of ``candidate`` against ``reference`` on ``images``, default tolerance
    (calibrated on the candidate's float noise, as convert's); returns its ParityReport."""
    from detzoo.convert.parity import ParityTolerance, compare_runners, noise_runners
    from detzoo.runners import OrtRunner

    with OrtRunner(reference, io, threads, allow_unsafe_ops=allow_unsafe_ops) as a, \
            OrtRunner(candidate, io, threads, allow_unsafe_ops=allow_unsafe_ops) as b, \
            noise_runners(candidate, io, threads, allow_unsafe_ops) as noise:
        return compare_runners(a, b, ((p.name, decode_image(p)) for p in images), ParityTolerance(),
                               noise=noise)


def parity_record(report) -> dict:
    """What the manifest records of a ParityReport: passed, the agreement figures and both atols."""
    t = report.tolerance
    return {"passed": report.passed, **report.agreement.to_json(),
            "tolerance": {"score_atol": t.score_atol, "box_atol": t.box_atol, "max_unmatched": t.max_unmatched,
                          "noise": t.noise}}


def batch_check(batch1: Path, wrapped, io, images: list, allow_unsafe_ops: bool = False) -> dict:
    """Run the wrapped artifact on a batch of images of one size and compare each row with the batch-1
    model on that image alone, detection by detection with the parity tolerances, calibrated on the
    batch-1 model's own float noise as convert's are: the Loop must change nothing but float rounding
    (onnxruntime may pick other kernels inside a Loop body)."""
    import numpy as np

    from detzoo.convert.parity import ParityReport, ParityTolerance, noise_runners
    from detzoo.detections import Detections, agreement
    from detzoo.runners import OrtRunner, resize_like_cv2

    if not images:
        return {"checked": False, "why": "no check image decoded"}
    h, w = images[0].shape[:2]
    batch = np.concatenate([preprocess(resize_like_cv2(im, h, w) if im.shape[:2] != (h, w) else im, io)
                            for im in (images * 2)[:2]])
    tol = ParityTolerance()
    with tempfile.TemporaryDirectory(prefix="detzoo-batch-") as tmp:
        import onnx

        wp = Path(tmp) / "wrapped.onnx"
        onnx.save(wrapped, str(wp))
        with OrtRunner(batch1, io, allow_unsafe_ops=allow_unsafe_ops) as one, \
                OrtRunner(wp, io, allow_unsafe_ops=allow_unsafe_ops) as many, \
                noise_runners(batch1, io, allow_unsafe_ops=allow_unsafe_ops) as noise:
            together = many.infer(batch)
            diff, pairs, noise_pairs = 0.0, [], {label: [] for label in noise}
            for i in range(len(batch)):
                alone = one.infer(batch[i:i + 1])
                diff = max(diff, *(float(np.max(np.abs(a[0] - t[i]))) if a.size else 0.0
                                   for a, t in zip(alone, together)))
                row = [t[i:i + 1] for t in together]
                ref = Detections.from_od_api(*alone, image_hw=(h, w))
                pairs.append((str(i), (h, w), ref, Detections.from_od_api(*row, image_hw=(h, w))))
                for label, r in noise.items():
                    moved = r.infer(batch[i:i + 1])
                    noise_pairs[label].append((str(i), (h, w), ref, Detections.from_od_api(*moved, image_hw=(h, w))))
    tol = tol.calibrated({label: agreement(p, tol.min_score, tol.iou) for label, p in noise_pairs.items()})
    a = agreement(pairs, tol.min_score, tol.iou)
    if not ParityReport(a, tol, []).passed:
        raise CheckFailed(f"the batch Loop changed the detections: max |score diff| {a.max_score_diff:.2e}, max "
                          f"|box diff| {a.max_box_diff:.2e}, unmatched {a.unmatched_reference + a.unmatched_candidate} "
                          f"(tolerance {tol.score_atol:.2g}, {tol.box_atol:.2g}, calibrated on the model's float noise)"
                          "; nothing was written")
    return {"checked": True, "batch": len(batch), "max_abs_diff": diff, "matched": a.matched,
            "max_score_diff": a.max_score_diff, "max_box_diff": a.max_box_diff,
            "tolerance": {"score_atol": tol.score_atol, "box_atol": tol.box_atol, "noise": tol.noise}}


def speed_probe(fp32: Path, int8: Path, io, image_path: Path, threads: int, allow_unsafe_ops: bool = False) -> dict:
    """A short interleaved p50 of fp32 and int8 on one image: enough to tell whether int8 pays off here."""
    import statistics

    from detzoo.cpu import cpu_class
    from detzoo.runners import OrtRunner

    batch = preprocess(decode_image(image_path), io)
    with OrtRunner(fp32, io, threads, allow_unsafe_ops=allow_unsafe_ops) as a, \
            OrtRunner(int8, io, threads, allow_unsafe_ops=allow_unsafe_ops) as b:
        for r in (a, b, a, b):
            r.infer(batch)
        ta, tb = [], []
        for _ in range(SPEED_RUNS):
            a.infer(batch)
            ta.append(a.last_inference_time)
            b.infer(batch)
            tb.append(b.last_inference_time)
    fa, fb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
    return {"cpu_class": cpu_class(), "threads": threads, "runs": SPEED_RUNS, "fp32_ms": round(fa, 2),
            "int8_ms": round(fb, 2), "ratio": round(fb / fa, 3)}
