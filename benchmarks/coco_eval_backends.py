"""Time pycocotools against faster-coco-eval on a COCO-sized synthetic set and compare the 12 stats.

Why: the issue allows a faster drop-in only if it gives identical numbers; this measures both.
Run: python benchmarks/coco_eval_backends.py [images] [detections_per_image]
"""

from __future__ import annotations

import contextlib
import io
import sys
import time

import numpy as np


def synthetic(n_images: int, dets_per_image: int, n_cats: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": str(c)} for c in range(1, n_cats + 1)]
    images, anns, res = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640})
        for _ in range(rng.integers(1, 15)):
            w, h = rng.uniform(4, 300, 2)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            c = int(rng.integers(1, n_cats + 1))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.uniform() < 0.01)})
            if rng.uniform() < 0.7:
                res.append({"image_id": i, "category_id": c, "score": float(rng.uniform(0.3, 1)),
                            "bbox": [x + rng.normal(0, 0.05 * w), y + rng.normal(0, 0.05 * h), w, h]})
        while sum(1 for r in res[-dets_per_image:] if r["image_id"] == i) < dets_per_image:
            w, h = rng.uniform(4, 300, 2)
            res.append({"image_id": i, "category_id": int(rng.integers(1, n_cats + 1)), "score": float(rng.uniform(0, 0.5)),
                        "bbox": [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), w, h]})
    return {"images": images, "annotations": anns, "categories": cats}, res


def run(mod_coco, mod_eval, gt, res):
    import copy

    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        g = mod_coco.COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        d = g.loadRes(copy.deepcopy(res))
        e = mod_eval.COCOeval(g, d, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
        return [float(s) for s in e.stats], time.perf_counter() - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    gt, res = synthetic(n, k)
    import faster_coco_eval.core.coco as fcoco
    import faster_coco_eval.core.faster_eval_api as feval
    import pycocotools.coco as pcoco
    import pycocotools.cocoeval as peval

    print(f"{n} images, {len(gt['annotations'])} ground-truth boxes, {len(res)} detections, 80 categories")
    sp, tp = run(pcoco, peval, gt, res)
    sf, tf = run(fcoco, feval, gt, res)
    print(f"pycocotools      {tp:7.2f} s")
    print(f"faster-coco-eval {tf:7.2f} s  ({tp / tf:.1f}x)")
    diffs = [abs(a - b) for a, b in zip(sp, sf)]
    print(f"stats identical: {sp == sf}; max |diff| {max(diffs):.3g}")
    for a, b in zip(sp, sf):
        print(f"  {a:.17f} {b:.17f}{'' if a == b else '  <-'}")


if __name__ == "__main__":
    main()
