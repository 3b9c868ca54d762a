"""Paired bootstrap of the mAP drop between two evaluations of the same images.

Each resample draws image positions with replacement and re-accumulates both results from the
per-image matches ``evaluation`` kept (``PerImageEval.map``): no model runs, no box is matched again.

Owns: resampling and the confidence interval. Does not touch: evaluation (results come from
``evaluate(..., keep_per_image=True)``), files, models.
"""

from __future__ import annotations

import numpy as np

from detzoo.coco.evaluation import CocoResult


def bootstrap_drop(base: CocoResult, cand: CocoResult, n: int, seed: int = 0,
                   confidence: float = 0.95) -> dict:
    """Paired bootstrap of the mAP drop ``base - cand`` over images.

    Both results must come from the same images and categories; each resample draws image
    positions with replacement and re-accumulates both from their stored per-image evaluation.
    """
    a, b = base.per_image, cand.per_image
    if a is None or b is None:
        raise ValueError("bootstrap needs results evaluated with keep_per_image=True")
    if a.img_ids != b.img_ids or a.cat_ids != b.cat_ids:
        raise ValueError("bootstrap needs both results on the same images and categories")
    if n < 1:
        raise ValueError(f"bootstrap resamples must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    m = len(a.img_ids)
    drops = np.empty(n)
    for j in range(n):
        idx = rng.integers(0, m, m)
        drops[j] = a.map(idx) - b.map(idx)
    lo, hi = np.quantile(drops, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return {"resamples": n, "seed": seed, "confidence": confidence, "low": float(lo), "high": float(hi),
            "std": float(drops.std(ddof=1)) if n > 1 else 0.0}
