import numpy as np
import pytest

from detzoo.detections import Detections, agreement, iou_matrix, match_detections


def test_from_od_api_converts_normalized_yxyx_to_pixels_and_offsets_classes():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [9, 9, 9, 9]]], dtype=np.float32)
    d = Detections.from_od_api(np.array([2.0]), boxes, np.array([[0.4, 0.9, 0.1]]), np.array([[0.0, 2.0, 5.0]]),
                               image_hw=(100, 200), class_offset=1)
    assert len(d) == 2  # num_detections cuts the padding
    # sorted by score: the full-image box (class 2+1) comes first
    np.testing.assert_allclose(d.boxes[0], [0, 0, 200, 100])
    np.testing.assert_allclose(d.boxes[1], [40, 10, 120, 50], rtol=1e-6)
    assert d.classes.tolist() == [3, 1]
    coco = d.to_coco(7)
    assert coco[1]["bbox"] == pytest.approx([40, 10, 80, 40], rel=1e-6)
    assert coco[0]["image_id"] == 7 and coco[0]["category_id"] == 3


def test_json_round_trip_and_threshold():
    d = Detections(np.array([[0, 0, 10, 10], [5, 5, 9, 9]]), [0.2, 0.8], [1, 1])
    e = Detections.from_json(d.to_json())
    np.testing.assert_array_equal(d.boxes, e.boxes)
    assert e.above(0.5).scores.tolist() == pytest.approx([0.8])


def test_iou_and_matching_respects_class():
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [0, 0, 5, 10]], dtype=np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 0.5]])
    ref = Detections(a, [0.9], [1])
    cand = Detections(b, [0.8, 0.95], [2, 1])  # the identical box has the wrong class
    m = match_detections(ref, cand, 0.5)
    assert m.ref_index.tolist() == [0] and cand.classes[m.cand_index[0]] == 1
    m2 = match_detections(ref, cand, 0.6)
    assert m2.ref_index.size == 0 and m2.unmatched_ref.tolist() == [0]


def test_agreement_counts_and_tolerates_threshold_slips():
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 40, 40]]), [0.9, 0.31], [1, 1])
    cand = Detections(np.array([[0, 0, 10, 11], [20, 20, 40, 40]]), [0.8, 0.29], [1, 1])
    a = agreement([("img", (100, 100), ref, cand)], min_score=0.3)
    assert a.reference == 2 and a.matched == 2 and a.unmatched_reference == 0
    assert a.max_score_diff == pytest.approx(0.1, abs=1e-6)
    assert a.max_box_diff == pytest.approx(0.01, abs=1e-6)
    lost = agreement([("img", (100, 100), ref, Detections.empty())], min_score=0.3)
    assert lost.unmatched_reference == 2 and lost.matched_share == 0.0


def test_identical_zero_area_boxes_match():
    """Zero-height boxes (what CenterNet outputs where its size head is <= 0) returned identically by
    source and artifact are the same detection. They had IoU 0, so the CenterNet fixture with its box
    heads left seeded (tests/fixtures/tf2zoo_build_centernet.py --raw-boxes) matched 83/199
    detections >= 0.3, 116 unmatched each side, all zero-area and identical in TF and onnxruntime.
    A zero-area box still matches nothing else."""
    boxes = np.array([[0.17, 0.77, 0.17, 0.92], [0.30, 0.16, 0.58, 0.53]], dtype=np.float32)  # ymin==ymax, normal
    d = Detections.from_od_api([2], boxes[None], [[0.9, 0.8]], [[2.0, 2.0]], (128, 128))
    assert iou_matrix(d.boxes, d.boxes).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    a = agreement([("img", (128, 128), d, d)])
    assert (a.reference, a.matched, a.unmatched_reference, a.unmatched_candidate) == (2, 2, 0, 0)
    moved = d.boxes.copy()
    moved[0, 0] += 1.0  # the same zero-height line, one pixel to the right: not the same box
    assert iou_matrix(d.boxes[:1], moved[:1]).tolist() == [[0.0]]
