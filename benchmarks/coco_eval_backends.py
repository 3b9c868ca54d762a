"""pycocotools against faster-coco-eval on a COCO-sized synthetic result set.

Why: the issue allows a faster drop-in only where it gives identical numbers. This times the
whole evaluation (index, loadRes, evaluate, accumulate, summarize) of both, interleaved, and
compares the 12 stats and the precision/recall arrays (which per-category AP and the PR curves
come from) bit for bit.
Run alone: python benchmarks/coco_eval_backends.py [images] [detections_per_image] [repeats]
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import sys
import time

import numpy as np


def synthetic(n_images: int, dets_per_image: int, n_cats: int = 80, seed: int = 0):
    """(instances dict, results list): 1-14 boxes per image, 70% of them found with 5% jitter,
    the rest of the ``dets_per_image`` detections random low-score boxes; 1% crowd boxes."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": str(c)} for c in range(1, n_cats + 1)]
    images, anns, res = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640})
        n = int(rng.integers(1, 15))
        wh = rng.uniform(4, 300, (n, 2))
        xy = rng.uniform(0, 1, (n, 2)) * ([640, 480] - wh)
        c = rng.integers(1, n_cats + 1, n)
        crowd = rng.uniform(size=n) < 0.01
        found = rng.uniform(size=n) < 0.7
        jitter = rng.normal(0, 0.05, (n, 2)) * wh
        score = rng.uniform(0.3, 1, n)
        for j in range(n):
            w, h = wh[j]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c[j]),
                         "bbox": [float(xy[j, 0]), float(xy[j, 1]), float(w), float(h)],
                         "area": float(w * h), "iscrowd": int(crowd[j])})
            if found[j] and len(res) - (i - 1) * dets_per_image < dets_per_image:
                res.append({"image_id": i, "category_id": int(c[j]), "score": float(score[j]),
                            "bbox": [float(xy[j, 0] + jitter[j, 0]), float(xy[j, 1] + jitter[j, 1]),
                                     float(w), float(h)]})
        k = i * dets_per_image - len(res)
        rwh = rng.uniform(4, 300, (k, 2))
        rxy = rng.uniform(0, 1, (k, 2)) * ([640, 480] - rwh)
        rc = rng.integers(1, n_cats + 1, k)
        rs = rng.uniform(0, 0.5, k)
        res.extend({"image_id": i, "category_id": int(rc[j]), "score": float(rs[j]),
                    "bbox": [float(rxy[j, 0]), float(rxy[j, 1]), float(rwh[j, 0]), float(rwh[j, 1])]}
                   for j in range(k))
    return {"images": images, "annotations": anns, "categories": cats}, res


def backends() -> dict:
    import faster_coco_eval.core.coco as fcoco
    import faster_coco_eval.core.faster_eval_api as feval
    import pycocotools.coco as pcoco
    import pycocotools.cocoeval as peval

    return {"pycocotools": (pcoco.COCO, peval.COCOeval), "faster-coco-eval": (fcoco.COCO, feval.COCOeval)}


def run_once(coco_cls, eval_cls, gt: dict, res: list) -> tuple[float, dict]:
    """Seconds of one full evaluation, and its 12 stats and precision/recall arrays."""
    gt, res = copy.deepcopy(gt), copy.deepcopy(res)  # both libraries mutate their inputs; not timed
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        g = coco_cls()
        g.dataset = gt
        g.createIndex()
        e = eval_cls(g, g.loadRes(res), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
        seconds = time.perf_counter() - t0
    return seconds, {"stats": [float(s) for s in e.stats], "precision": np.asarray(e.eval["precision"]),
                     "recall": np.asarray(e.eval["recall"])}


def bench(n_images: int = 5000, dets_per_image: int = 100, repeats: int = 3, slow_repeats: int | None = None) -> dict:
    """Median seconds of each backend (interleaved) and whether every number is identical.

    ``slow_repeats`` caps pycocotools' runs (it takes about a minute at full size).
    """
    t0 = time.perf_counter()
    gt, res = synthetic(n_images, dets_per_image)
    gen_s = time.perf_counter() - t0
    be = backends()
    times = {name: [] for name in be}
    outs = {}
    for r in range(repeats):
        for name, (coco_cls, eval_cls) in be.items():
            if name == "pycocotools" and slow_repeats is not None and r >= slow_repeats:
                continue
            s, out = run_once(coco_cls, eval_cls, gt, res)
            times[name].append(s)
            outs.setdefault(name, out)
    p, f = outs["pycocotools"], outs["faster-coco-eval"]
    return {
        "images": n_images, "categories": len(gt["categories"]), "ground_truth": len(gt["annotations"]),
        "detections": len(res), "generate_s": gen_s,
        "seconds": {k: statistics.median(v) for k, v in times.items()}, "runs": {k: len(v) for k, v in times.items()},
        "stats_identical": p["stats"] == f["stats"],
        "arrays_identical": bool(np.array_equal(p["precision"], f["precision"])
                                 and np.array_equal(p["recall"], f["recall"])),
        "max_stat_diff": max(abs(a - b) for a, b in zip(p["stats"], f["stats"])),
        "stats": {"pycocotools": p["stats"], "faster-coco-eval": f["stats"]},
    }


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    r = bench(n, k, reps)
    print(f"{r['images']} images, {r['ground_truth']} ground-truth boxes, {r['detections']} detections, "
          f"{r['categories']} categories")
    tp, tf = r["seconds"]["pycocotools"], r["seconds"]["faster-coco-eval"]
    print(f"pycocotools      {tp:7.2f} s (median of {r['runs']['pycocotools']})")
    print(f"faster-coco-eval {tf:7.2f} s (median of {r['runs']['faster-coco-eval']}, {tp / tf:.1f}x faster)")
    print(f"12 stats identical: {r['stats_identical']}; precision/recall arrays identical: {r['arrays_identical']}; "
          f"max |diff| {r['max_stat_diff']:.3g}")


if __name__ == "__main__":
    main()
