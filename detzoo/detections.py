"""The one detection type every runner produces and every metric consumes.

Runners convert their raw outputs here exactly once (box order, normalized vs pixel coordinates,
0- vs 1-based class ids); COCO code never sees a raw model output. This prevents the class of bug
the MLPerf reference shows, where per-framework post-processing disagrees.

Owns: ``Detections``, IoU, matching two models' detections and their agreement. Does not touch:
raw model outputs (``detzoo.runners`` converts them), COCO evaluation (``detzoo.coco``), files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image.

    boxes:   float32 [N, 4] as (x1, y1, x2, y2) in absolute pixels of the original image
    scores:  float32 [N], descending
    classes: int64 [N], dataset category ids (COCO ids for COCO models)
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self):
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(classes)):
            raise ValueError(f"Detections: {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes")
        order = np.argsort(-scores, kind="stable")
        object.__setattr__(self, "boxes", boxes[order])
        object.__setattr__(self, "scores", scores[order])
        object.__setattr__(self, "classes", classes[order])

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))

    @classmethod
    def from_od_api(cls, num, boxes, scores, classes, image_hw: tuple[int, int], class_offset: int = 0) -> "Detections":
        """Convert the TF Object Detection API contract (batch of one).

        ``boxes`` are normalized (ymin, xmin, ymax, xmax); ``classes`` are float label ids to which
        ``class_offset`` is added (1 for TFLite post-processing, whose ids are 0-based).
        """
        n = int(np.asarray(num).reshape(-1)[0])
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[:n]
        h, w = image_hw
        xyxy = np.stack([b[:, 1] * w, b[:, 0] * h, b[:, 3] * w, b[:, 2] * h], axis=1)
        xyxy = np.clip(xyxy, 0, [w, h, w, h])
        cls_ids = np.rint(np.asarray(classes, dtype=np.float64).reshape(-1)[:n]).astype(np.int64) + class_offset
        return cls(xyxy, np.asarray(scores).reshape(-1)[:n], cls_ids)

    def above(self, threshold: float) -> "Detections":
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])

    def to_coco(self, image_id: int) -> list[dict]:
        """COCO results entries (bbox as x, y, width, height); every detection, no score cut."""
        out = []
        for (x1, y1, x2, y2), s, c in zip(self.boxes.tolist(), self.scores.tolist(), self.classes.tolist()):
            out.append({"image_id": int(image_id), "category_id": int(c),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
        return out

    def to_json(self) -> dict:
        return {"boxes": self.boxes.tolist(), "scores": self.scores.tolist(), "classes": self.classes.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Detections":
        return cls(np.asarray(d["boxes"], dtype=np.float32).reshape(-1, 4), d["scores"], d["classes"])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N,4] with every box in ``b`` [M,4] (x1, y1, x2, y2).

    Two identical boxes have IoU 1 even when they have no area (a detector that clamps a box size
    to zero, as CenterNet does, returns such boxes): parity must not count the same output twice
    as lost. A zero-area box against any other box has IoU 0."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    same = np.all(a == b, axis=-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), np.where(same, 1.0, 0.0))


@dataclass(frozen=True)
class Match:
    """Greedy same-class IoU matching of a reference against a candidate."""

    ref_index: np.ndarray   # indices into the reference of matched detections
    cand_index: np.ndarray  # the candidate detection each was matched to
    unmatched_ref: np.ndarray
    unmatched_cand: np.ndarray


def match_detections(ref: Detections, cand: Detections, iou_threshold: float = 0.5) -> Match:
    """Match each reference detection (highest score first) to the best unused same-class candidate."""
    ious = iou_matrix(ref.boxes, cand.boxes)
    if ious.size:
        ious = np.where(ref.classes[:, None] == cand.classes[None, :], ious, 0.0)
    used = np.zeros(len(cand), dtype=bool)
    ri, ci = [], []
    for i in range(len(ref)):
        if len(cand) == 0:
            break
        row = np.where(used, -1.0, ious[i])
        j = int(np.argmax(row))
        if row[j] >= iou_threshold:
            used[j] = True
            ri.append(i)
            ci.append(j)
    ri_a = np.asarray(ri, dtype=np.int64)
    return Match(ri_a, np.asarray(ci, dtype=np.int64),
                 np.setdiff1d(np.arange(len(ref)), ri_a), np.flatnonzero(~used))


@dataclass(frozen=True)
class Agreement:
    """How closely a candidate model's detections follow a reference model's, over many images.

    Only reference and candidate detections scoring at least ``min_score`` must be matched (same
    class, IoU >= ``iou``); they may match a counterpart of any score, so a detection that merely
    slips under the threshold on one side is not counted as lost. Box differences are in units of
    image size (the largest coordinate difference divided by the image's width or height).
    """

    images: int
    reference: int
    matched: int
    unmatched_reference: int
    unmatched_candidate: int
    max_score_diff: float
    max_box_diff: float
    mean_score_diff: float
    mean_box_diff: float
    worst_image: str | None

    @property
    def matched_share(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["matched_share"] = self.matched_share
        return d


def agreement(pairs, min_score: float = 0.3, iou: float = 0.5) -> Agreement:
    """``pairs``: iterable of (key, image_hw, reference Detections, candidate Detections)."""
    n_img = n_ref = n_match = un_ref = un_cand = 0
    sdiffs, bdiffs = [], []
    worst, worst_val = None, -1.0
    for key, (h, w), ref, cand in pairs:
        n_img += 1
        m = match_detections(ref, cand, iou)
        keep = ref.scores[m.ref_index] >= min_score
        cand_keep = cand.scores[m.cand_index] >= min_score
        pair_mask = keep | cand_keep
        ri, ci = m.ref_index[pair_mask], m.cand_index[pair_mask]
        n_ref += int(np.sum(ref.scores >= min_score))
        n_match += int(np.sum(keep))
        un_ref += int(np.sum(ref.scores[m.unmatched_ref] >= min_score))
        un_cand += int(np.sum(cand.scores[m.unmatched_cand] >= min_score))
        if len(ri):
            sd = np.abs(ref.scores[ri] - cand.scores[ci]).astype(np.float64)
            bd = (np.abs(ref.boxes[ri] - cand.boxes[ci]) / np.array([w, h, w, h], dtype=np.float64)).max(axis=1)
            sdiffs.append(sd)
            bdiffs.append(bd)
            val = float(max(sd.max(), bd.max()))
            if val > worst_val:
                worst, worst_val = key, val
    sd = np.concatenate(sdiffs) if sdiffs else np.zeros(0)
    bd = np.concatenate(bdiffs) if bdiffs else np.zeros(0)
    return Agreement(n_img, n_ref, n_match, un_ref, un_cand,
                     float(sd.max()) if sd.size else 0.0, float(bd.max()) if bd.size else 0.0,
                     float(sd.mean()) if sd.size else 0.0, float(bd.mean()) if bd.size else 0.0, worst)
