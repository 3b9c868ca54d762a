"""COCO box evaluation: pycocotools' 12 stats, per-category AP, PR arrays and per-image matches.

Numbers come from pycocotools' own ``COCOeval`` on in-memory objects (no temporary files, its
prints silenced), so every stat equals what raw pycocotools gives on the same input. The
per-image evaluation is kept (``PerImageEval``) so a paired bootstrap can re-accumulate resampled
image sets without re-running any model or re-matching any box.

Where no per-image evaluation is wanted, faster-coco-eval (pycocotools' algorithm in C++) runs
instead when installed. Its 12 stats equal pycocotools'; its precision array may differ in the
last bit where a category's first detections are all true positives, so per-category AP can move
in the 16th digit (tests/test_coco_backends.py holds both; speed: BENCHMARKS.md). It does not
expose per-image matches, so the bootstrap keeps pycocotools.

Owns: running either evaluator and the result types. Does not touch: files (ground truth arrives
as a dict: ``instances``), models, resampling (``bootstrap``).
"""

from __future__ import annotations

import contextlib
import io as _io
from dataclasses import dataclass, field

import numpy as np

from detzoo.detections import Detections

# pycocotools' summarize() order: (name, AP or AR, IoU, area, maxDets)
_AREAS = (("s", "small"), ("m", "medium"), ("l", "large"))
STAT_ROWS = (
    ("AP", "AP", "0.50:0.95", "all", 100),
    ("AP50", "AP", "0.50", "all", 100),
    ("AP75", "AP", "0.75", "all", 100),
    *((f"AP{s}", "AP", "0.50:0.95", area, 100) for s, area in _AREAS),
    *((f"AR{m}", "AR", "0.50:0.95", "all", m) for m in (1, 10, 100)),
    *((f"AR{s}", "AR", "0.50:0.95", area, 100) for s, area in _AREAS),
)
STAT_NAMES = tuple(r[0] for r in STAT_ROWS)


# --- the result ------------------------------------------------------------------------------

@dataclass
class _CategoryEval:
    """One category's per-image matches, concatenated in image order (area 'all', 100 dets)."""

    scores: np.ndarray   # [N] detection scores
    matched: np.ndarray  # bool [T, N]
    ignored: np.ndarray  # bool [T, N]
    starts: np.ndarray   # [I] where each image's detections begin
    lens: np.ndarray     # [I] how many it has
    npig: np.ndarray     # [I] ground-truth boxes that count (not crowd / ignored)
    present: np.ndarray  # bool [I]: the image has a box of this category on either side


@dataclass
class PerImageEval:
    """COCOeval.evaluate()'s per-image matching for area 'all', maxDets 100, as arrays per category."""

    img_ids: list
    cat_ids: list
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    categories: list  # _CategoryEval per category

    def map(self, idx: np.ndarray | None = None) -> float:
        """AP@[.5:.95] over images ``idx`` (positions, repeats allowed), as pycocotools accumulates it.

        This is ``COCOeval.accumulate`` restricted to area 'all' and 100 detections, vectorized:
        detections are gathered in resample order (as accumulate concatenates them), sorted
        stably, and the precision envelope and recall lookup done in numpy. On any resample it
        equals pycocotools' own accumulate on the resampled evalImgs (tested), in milliseconds.
        """
        idx = np.arange(len(self.img_ids)) if idx is None else np.asarray(idx, dtype=np.int64)
        T, R = len(self.iou_thresholds), len(self.recall_thresholds)
        precision = -np.ones((T, R, len(self.cat_ids)))
        for k, c in enumerate(self.categories):
            if not c.present[idx].any():
                continue
            npig = int(c.npig[idx].sum())
            if npig == 0:
                continue
            lens = c.lens[idx]
            total = int(lens.sum())
            q = np.zeros((T, R))
            if total:
                ends = np.cumsum(lens)
                gather = np.repeat(c.starts[idx] - (ends - lens), lens) + np.arange(total)
                scores = c.scores[gather]
                order = gather[np.argsort(-scores, kind="mergesort")]
                dtm, dtig = c.matched[:, order], c.ignored[:, order]
                tp = np.cumsum(dtm & ~dtig, axis=1).astype(float)
                fp = np.cumsum(~dtm & ~dtig, axis=1).astype(float)
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(T):
                    pos = np.searchsorted(rc[t], self.recall_thresholds, side="left")
                    ok = pos < total
                    q[t, ok] = pr[t, pos[ok]]
            precision[:, :, k] = q
        s = precision[precision > -1]
        return float(np.mean(s)) if s.size else -1.0


@dataclass
class CocoResult:
    """12 COCO stats, per-category AP and the precision/recall arrays (for PR-curve plots).

    ``precision`` is pycocotools' [T, R, K, A, M] array and ``recall`` its [T, K, A, M] array
    (-1 where a category has no ground truth). A stat is -1 when nothing could be measured.
    """

    stats: list
    per_category: dict            # category id -> AP@[.5:.95] (area all, 100 dets); -1 if no ground truth
    per_category_ap50: dict
    category_names: dict
    precision: np.ndarray
    recall: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    cat_ids: list
    num_images: int
    num_detections: int
    per_image: PerImageEval | None = field(default=None, repr=False)
    evaluator: str = "pycocotools"

    @property
    def stats_dict(self) -> dict:
        return dict(zip(STAT_NAMES, self.stats))

    @property
    def map(self) -> float:
        return self.stats[0]

    @property
    def ap50(self) -> float:
        return self.stats[1]

    def pr_curves(self) -> dict:
        """Mean precision over categories at each recall threshold (area all, 100 dets): the curves a plot draws."""
        out = {}
        for label, t in (("0.50:0.95", None), ("0.50", 0), ("0.75", 5)):
            p = self.precision[:, :, :, 0, -1]
            p = p if t is None else p[t:t + 1]
            curve = []
            for r in range(p.shape[1]):
                v = p[:, r, :]
                v = v[v > -1]
                curve.append(round(float(v.mean()), 6) if v.size else -1.0)
            out[label] = curve
        return out

    def to_json(self) -> dict:
        return {
            "stats": {k: float(v) for k, v in self.stats_dict.items()},
            "per_category": [{"id": int(c), "name": self.category_names.get(c, str(c)),
                              "AP": float(self.per_category[c]), "AP50": float(self.per_category_ap50[c])}
                             for c in self.cat_ids],
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "evaluator": self.evaluator,
            "recall_thresholds": [round(float(r), 2) for r in self.recall_thresholds],
            "pr_curves": self.pr_curves(),
        }


# --- evaluation ------------------------------------------------------------------------------

@contextlib.contextmanager
def _silenced():
    with contextlib.redirect_stdout(_io.StringIO()):
        yield


def _coco_from_dict(d: dict, coco_cls=None):
    if coco_cls is None:
        from pycocotools.coco import COCO as coco_cls

    with _silenced():
        coco = coco_cls()
        coco.dataset = d
        coco.createIndex()
    return coco


def _results_coco(gt_coco, results: list[dict], coco_cls=None):
    """pycocotools' loadRes, which mutates its input and fails on an empty list; copies, handles both."""
    if coco_cls is None:
        from pycocotools.coco import COCO as coco_cls

    if results:
        known = set(gt_coco.getImgIds())
        stray = {r["image_id"] for r in results} - known
        if stray:
            raise ValueError(f"results name image ids not in the ground truth: {sorted(stray)[:5]}")
        with _silenced():
            return gt_coco.loadRes([dict(r) for r in results])
    with _silenced():
        res = coco_cls()
        res.dataset = {"images": list(gt_coco.dataset["images"]), "annotations": [],
                       "categories": list(gt_coco.dataset.get("categories", []))}
        res.createIndex()
    return res


def evaluator(keep_per_image: bool) -> str:
    """The backend ``evaluate`` uses: faster-coco-eval where it can, pycocotools otherwise."""
    if keep_per_image:
        return "pycocotools"
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster-coco-eval"


def _backend(name: str):
    if name == "faster-coco-eval":
        from faster_coco_eval.core.coco import COCO
        from faster_coco_eval.core.faster_eval_api import COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    return COCO, COCOeval


def evaluate(gt: dict, results: list[dict], img_ids=None, keep_per_image: bool = True,
             backend: str | None = None) -> CocoResult:
    """Box AP of COCO ``results`` entries against the instances dict ``gt``, by pycocotools' algorithm.

    ``img_ids`` restricts evaluation to those images (as ``params.imgIds`` does); every result
    is submitted as given, no score cut. ``gt`` is not modified. ``backend``: "pycocotools" or
    "faster-coco-eval" (default: ``evaluator(keep_per_image)``).
    """
    backend = backend or evaluator(keep_per_image)
    if keep_per_image and backend != "pycocotools":
        raise ValueError("per-image evaluation needs the pycocotools backend")
    coco_cls, eval_cls = _backend(backend)
    gt = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
    gt_coco = _coco_from_dict(gt, coco_cls)
    dt_coco = _results_coco(gt_coco, results, coco_cls)
    with _silenced():
        ev = eval_cls(gt_coco, dt_coco, "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted({int(i) for i in img_ids})
        ev.evaluate()
        per_image = _per_image(ev) if keep_per_image else None
        ev.accumulate()
        ev.summarize()
    p = ev.params
    precision, recall = ev.eval["precision"], ev.eval["recall"]
    per_cat, per_cat50 = {}, {}
    for k, c in enumerate(p.catIds):
        v = precision[:, :, k, 0, -1]
        v = v[v > -1]
        per_cat[int(c)] = float(v.mean()) if v.size else -1.0
        v50 = precision[0, :, k, 0, -1]
        v50 = v50[v50 > -1]
        per_cat50[int(c)] = float(v50.mean()) if v50.size else -1.0
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt.get("categories", [])}
    img_set = set(p.imgIds)
    n_det = sum(1 for r in results if r["image_id"] in img_set)
    return CocoResult(stats=[float(s) for s in ev.stats], per_category=per_cat, per_category_ap50=per_cat50,
                      category_names=names, precision=precision, recall=recall,
                      iou_thresholds=np.asarray(p.iouThrs), recall_thresholds=np.asarray(p.recThrs),
                      cat_ids=[int(c) for c in p.catIds], num_images=len(p.imgIds), num_detections=n_det,
                      per_image=per_image, evaluator=backend)


def _per_image(ev) -> PerImageEval:
    """Area 'all' slice of ``evalImgs`` (laid out [cat][area][img]) as arrays per category."""
    p = ev.params
    I, A, T = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    cats = []
    for k in range(len(p.catIds)):
        cells = ev.evalImgs[k * A * I:k * A * I + I]  # area index 0 is 'all'
        lens = np.array([0 if e is None else len(e["dtScores"]) for e in cells], dtype=np.int64)
        kept = [e for e in cells if e is not None and len(e["dtScores"])]
        cats.append(_CategoryEval(
            scores=np.concatenate([np.asarray(e["dtScores"], dtype=float) for e in kept]) if kept else np.zeros(0),
            matched=np.concatenate([np.asarray(e["dtMatches"]) != 0 for e in kept], axis=1) if kept
            else np.zeros((T, 0), bool),
            ignored=np.concatenate([np.asarray(e["dtIgnore"]).astype(bool) for e in kept], axis=1) if kept
            else np.zeros((T, 0), bool),
            starts=np.cumsum(lens) - lens, lens=lens,
            npig=np.array([0 if e is None else int(np.count_nonzero(e["gtIgnore"] == 0)) for e in cells]),
            present=np.array([e is not None for e in cells], dtype=bool)))
    return PerImageEval(list(p.imgIds), list(p.catIds), np.asarray(p.iouThrs), np.asarray(p.recThrs), cats)


def detections_to_results(dets: dict[int, Detections]) -> list[dict]:
    """COCO results for every detection of every image (boxes converted once, in ``Detections``)."""
    out = []
    for image_id in sorted(dets):
        out.extend(dets[image_id].to_coco(image_id))
    return out


def evaluate_detections(gt: dict, dets: dict[int, Detections], img_ids=None) -> CocoResult:
    return evaluate(gt, detections_to_results(dets), img_ids if img_ids is not None else sorted(dets))
