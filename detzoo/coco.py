"""COCO data and box evaluation, shared by verify and accuracy-aware quantization.

Numbers come from pycocotools' own ``COCOeval`` on in-memory objects (no temporary files, its
prints silenced), so every stat equals what raw pycocotools gives on the same input. The
per-image evaluation is kept so a paired bootstrap can re-accumulate resampled image sets without
re-running any model or re-matching any box.

Where no per-image evaluation is wanted, faster-coco-eval (pycocotools' algorithm in C++) runs
instead when installed: about 5x faster (50 s -> 11 s on 5,000 images x 100 detections x 80
categories, see BENCHMARKS.md), with the 12 stats identical to pycocotools' on that set and on
every case of tests/test_coco.py. Its precision array differs from pycocotools' only in the last
bit where a category's first detections are all true positives (1.0 instead of 1 - 2**-52), so
per-category AP can move in the 16th digit. It does not expose per-image matches, so the
bootstrap keeps pycocotools.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detzoo.detections import Detections
from detzoo.errors import DetzooError
from detzoo.images import ImageRecord

# pycocotools' summarize() order: (name, AP or AR, IoU, area, maxDets)
STAT_ROWS = (
    ("AP", "AP", "0.50:0.95", "all", 100),
    ("AP50", "AP", "0.50", "all", 100),
    ("AP75", "AP", "0.75", "all", 100),
    ("APs", "AP", "0.50:0.95", "small", 100),
    ("APm", "AP", "0.50:0.95", "medium", 100),
    ("APl", "AP", "0.50:0.95", "large", 100),
    ("AR1", "AR", "0.50:0.95", "all", 1),
    ("AR10", "AR", "0.50:0.95", "all", 10),
    ("AR100", "AR", "0.50:0.95", "all", 100),
    ("ARs", "AR", "0.50:0.95", "small", 100),
    ("ARm", "AR", "0.50:0.95", "medium", 100),
    ("ARl", "AR", "0.50:0.95", "large", 100),
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


# --- reference mode --------------------------------------------------------------------------

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


# --- instances files -------------------------------------------------------------------------

OVERHANG_TOLERANCE = 1.0  # px: COCO's own boxes overshoot their image by rounding, within this


class Instances(dict):
    """A checked COCO instances dict, as pycocotools is given it, plus ``warnings``: one line per
    thing in the file that is unusual but evaluated unchanged, for the caller to show once."""

    def __init__(self, *args, warnings=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.warnings = list(warnings)


def load_instances(path: str | os.PathLike) -> Instances:
    """Read and check a COCO instances JSON; fills ``area`` (w*h) and ``iscrowd`` (0) when absent.

    Raises DetzooError with one line naming what is wrong: only what is malformed (what
    pycocotools could not evaluate as meant). Categories missing from the file are derived from
    the annotations' category ids. Boxes reaching past their image are kept as they are, as
    pycocotools keeps them, and counted in the result's ``warnings``.
    """
    path = Path(path)
    if not path.is_file():
        raise DetzooError(f"annotations file not found: {path}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DetzooError(f"annotations {path.name} is not JSON ({e}); expected a COCO instances file") from None
    return check_instances(d, path.name)


def check_instances(d, where: str = "annotations") -> Instances:
    if not isinstance(d, dict):
        raise DetzooError(f"{where} holds a JSON {type(d).__name__}; expected a COCO instances object "
                          "with 'images' and 'annotations'")
    missing = [k for k in ("images", "annotations") if not isinstance(d.get(k), list)]
    if missing:
        raise DetzooError(f"{where} lacks {' and '.join(repr(k) for k in missing)} lists; expected a COCO "
                          "instances file (keys: images, annotations, categories)")
    ids, sizes = set(), {}
    for img in d["images"]:
        if not (isinstance(img, dict) and isinstance(img.get("id"), int) and isinstance(img.get("file_name"), str)):
            raise DetzooError(f"{where}: image entry {str(img)[:80]} needs an integer 'id' and a 'file_name'")
        if img["id"] in ids:
            raise DetzooError(f"{where}: image id {img['id']} appears twice; expected unique ids")
        ids.add(img["id"])
        if isinstance(img.get("width"), (int, float)) and isinstance(img.get("height"), (int, float)):
            sizes[img["id"]] = (img["width"], img["height"])
    if not ids:
        raise DetzooError(f"{where} lists no images")
    anns, ann_ids = [], set()
    n_over, max_over = 0, 0.0
    for a in d["annotations"]:
        ok = (isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("category_id"), int)
              and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4
              and all(isinstance(v, (int, float)) for v in a["bbox"]))
        if not ok:
            raise DetzooError(f"{where}: annotation {str(a)[:80]} needs integer 'id', 'image_id', 'category_id' "
                              "and a 4-number 'bbox' [x, y, width, height]")
        if a.get("image_id") not in ids:
            raise DetzooError(f"{where}: annotation {a['id']} names image id {a.get('image_id')!r}, "
                              "which is not in 'images'")
        if a["id"] < 1 or a["id"] in ann_ids:
            # pycocotools matches by annotation id; 0 reads as "unmatched" and duplicates collapse.
            raise DetzooError(f"{where}: annotation id {a['id']} is {'not positive' if a['id'] < 1 else 'repeated'}; "
                              "expected unique ids >= 1")
        ann_ids.add(a["id"])
        x, y, w, h = a["bbox"]
        if w < 0 or h < 0:
            raise DetzooError(f"{where}: annotation {a['id']} has a negative size {a['bbox']}; "
                              "expected bbox [x, y, width, height] with width, height >= 0")
        size = sizes.get(a["image_id"])
        if size:  # pycocotools neither clips nor drops such boxes; neither does detzoo
            over = max(-x, -y, x + w - size[0], y + h - size[1])
            if over > OVERHANG_TOLERANCE:
                n_over, max_over = n_over + 1, max(max_over, over)
        if "area" not in a or "iscrowd" not in a:
            a = {**a, "area": a.get("area", a["bbox"][2] * a["bbox"][3]), "iscrowd": a.get("iscrowd", 0)}
        anns.append(a)
    cats = d.get("categories")
    if not isinstance(cats, list) or not cats:
        cats = [{"id": c, "name": str(c)} for c in sorted({a["category_id"] for a in anns})]
    elif not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in cats):
        raise DetzooError(f"{where}: every category needs an integer 'id'")
    else:
        unknown = sorted({a["category_id"] for a in anns} - {c["id"] for c in cats})
        if unknown:
            raise DetzooError(f"{where}: annotations use category ids {unknown[:5]} that 'categories' "
                              "does not list")
    warnings = []
    if n_over:
        warnings.append(f"{where}: {n_over} annotation box(es) extend more than {OVERHANG_TOLERANCE:g} px past "
                        f"their image (largest overhang {max_over:.4g} px); evaluated as pycocotools does, "
                        "unchanged")
    return Instances({**d, "annotations": anns, "categories": cats}, warnings=warnings)


def first_image_ids(gt: dict, limit: int | None = None) -> list[int]:
    """The first ``limit`` image ids in ascending order (the zoo measures the first 1000 of val2017)."""
    ids = sorted(img["id"] for img in gt["images"])
    return ids if limit is None else ids[:limit]


def coco_records(gt: dict, images_dir: str | os.PathLike, limit: int | None = None) -> list[ImageRecord]:
    """Image records for the first ``limit`` images by id, each ``file_name`` looked up in ``images_dir``.

    Refuses file names that leave the folder and files that are not there (naming how many and
    which), so a wrong --images is caught before any model runs.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DetzooError(f"images folder not found: {folder}")
    by_id = {img["id"]: img["file_name"] for img in gt["images"]}
    records, missing = [], []
    for i in first_image_ids(gt, limit):
        name = by_id[i]
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise DetzooError(f"annotations name image file {name!r}: expected a path inside the images folder")
        p = folder / rel
        if not p.is_file():
            missing.append(name)
        records.append(ImageRecord(int(i), p))
    if missing:
        raise DetzooError(f"{len(missing)} of {len(records)} images named in the annotations are not in {folder} "
                          f"(first: {', '.join(missing[:3])}); expected the folder the annotations describe")
    return records
