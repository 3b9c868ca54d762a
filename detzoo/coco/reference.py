"""Reference mode: a reference model's confident detections as ground truth, and fidelity.

Without annotations, a candidate (a converted or quantized variant) is scored by COCO AP against
what its reference (the source model) detects at or above a score threshold.

Owns: building that instances dict and the fidelity score. Does not touch: the evaluator (calls
``evaluation.evaluate``), files, models (detections arrive as ``Detections``).
"""

from __future__ import annotations

from detzoo.coco.evaluation import CocoResult, evaluate
from detzoo.detections import Detections


def reference_ground_truth(sizes: dict[int, tuple[int, int]], ref: dict[int, Detections],
                           threshold: float, cat_ids=None, names: dict | None = None) -> dict:
    """An instances dict whose boxes are the reference's detections scoring >= ``threshold``.

    ``sizes`` maps image id -> (height, width). Categories are ``cat_ids`` or every class the
    reference emits at any score, so a candidate's low-score boxes of those classes still count.
    """
    images = [{"id": int(i), "file_name": str(i), "height": int(h), "width": int(w)}
              for i, (h, w) in sorted(sizes.items())]
    anns = []
    for i in sorted(sizes):
        d = ref.get(i, Detections.empty()).above(threshold)
        for (x1, y1, x2, y2), c in zip(d.boxes.tolist(), d.classes.tolist()):
            bw, bh = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": int(i), "category_id": int(c),
                         "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": 0})
    if cat_ids is None:
        cat_ids = sorted({int(c) for d in ref.values() for c in d.classes.tolist()})
    names = names or {}
    cats = [{"id": int(c), "name": names.get(int(c), str(c))} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": cats}


def fidelity(ref: dict[int, Detections], cand: dict[int, Detections], sizes: dict[int, tuple[int, int]],
             threshold: float = 0.5, names: dict | None = None) -> CocoResult:
    """COCO AP of the candidate's full detections against the reference's detections >= threshold.

    1.0 means the candidate finds every box the reference is confident about, at the same
    place, before any box the reference does not have. Categories: both models' classes.
    """
    cats = sorted({int(c) for d in (*ref.values(), *cand.values()) for c in d.classes.tolist()})
    gt = reference_ground_truth(sizes, ref, threshold, cats, names)
    results = []
    for i in sorted(sizes):
        results.extend(cand.get(i, Detections.empty()).to_coco(i))
    return evaluate(gt, results, sorted(sizes))
