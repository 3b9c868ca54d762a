"""detzoo.coco.reference: a reference model's detections as ground truth, and fidelity."""

import numpy as np
import pytest

from detzoo.coco.reference import fidelity, reference_ground_truth
from detzoo.detections import Detections


def test_reference_ground_truth_and_self_fidelity():
    ref = {1: Detections([[10, 10, 50, 40], [60, 5, 90, 30], [0, 0, 5, 5]], [0.9, 0.6, 0.2], [1, 3, 1]),
           2: Detections.empty()}
    sizes = {1: (100, 120), 2: (100, 120)}
    gt = reference_ground_truth(sizes, ref, 0.5)
    assert [a["bbox"] for a in gt["annotations"]] == [[10.0, 10.0, 40.0, 30.0], [60.0, 5.0, 30.0, 25.0]]
    assert [a["id"] for a in gt["annotations"]] == [1, 2]  # ids >= 1: pycocotools reads 0 as unmatched
    assert [c["id"] for c in gt["categories"]] == [1, 3]
    # pycocotools' precision is tp / (tp + fp + eps): one true positive gives 1 - 2e-16
    assert fidelity(ref, ref, sizes).map == pytest.approx(1.0, abs=1e-12)
    moved = {1: Detections(ref[1].boxes + np.array([8, 0, 8, 0], np.float32), ref[1].scores, ref[1].classes),
             2: Detections.empty()}
    f = fidelity(ref, moved, sizes)
    assert 0 < f.map < 0.99 and f.ap50 == pytest.approx(1.0, abs=1e-12)
    assert fidelity(ref, {1: Detections.empty(), 2: Detections.empty()}, sizes).map == 0.0
