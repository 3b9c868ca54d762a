"""detzoo.coco.evaluation against raw pycocotools on ground truth the tests construct."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from detzoo.coco.evaluation import STAT_NAMES, evaluate
from detzoo.coco.instances import first_image_ids
from tests.cocohelp import oracle_results, raw_cocoeval, shapes  # noqa: F401 (a fixture)


def test_stat_names_in_pycocotools_order():
    assert STAT_NAMES == ("AP", "AP50", "AP75", "APs", "APm", "APl",
                          "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def test_oracle_is_exactly_one(shapes):
    _, _, gt = shapes
    r = evaluate(gt, oracle_results(gt))
    assert r.stats[0] == 1.0 and r.stats[1] == 1.0 and r.stats[8] == 1.0
    assert set(r.per_category) == {1, 3} and all(v == 1.0 for v in r.per_category.values())
    assert r.num_images == len(gt["images"])


def test_empty_detections_are_zero(shapes):
    _, _, gt = shapes
    r = evaluate(gt, [])
    oracle = evaluate(gt, oracle_results(gt))
    # 0 wherever the oracle measures something; -1 (nothing to measure: no large boxes) stays -1
    assert r.stats == [-1.0 if s == -1.0 else 0.0 for s in oracle.stats]
    assert r.stats[0] == 0.0 and oracle.stats[5] == -1.0
    assert r.per_image.map() == 0.0


@pytest.mark.parametrize("shift,drop_every", [(3.0, 0), (1.5, 4), (6.0, 3)])
def test_shifted_boxes_equal_raw_pycocotools(shapes, tmp_path, shift, drop_every):
    _, ann, gt = shapes
    results = oracle_results(gt, shift, drop_every)
    r = evaluate(gt, results)
    raw = raw_cocoeval(ann, results, tmp_path)
    assert r.stats == [float(s) for s in raw.stats]  # to the last digit
    assert 0.0 < r.stats[0] < 1.0
    np.testing.assert_array_equal(r.precision, raw.eval["precision"])
    np.testing.assert_array_equal(r.recall, raw.eval["recall"])


def test_image_subset_equals_raw_pycocotools(shapes, tmp_path):
    _, ann, gt = shapes
    results = oracle_results(gt, 2.0, 5)
    ids = first_image_ids(gt, 10)
    assert ids == sorted(i["id"] for i in gt["images"])[:10]
    r = evaluate(gt, results, ids)
    assert r.num_images == 10
    assert r.stats == [float(s) for s in raw_cocoeval(ann, results, tmp_path, ids).stats]


def test_inputs_not_mutated(shapes):
    _, _, gt = shapes
    gt_copy, results = copy.deepcopy(gt), oracle_results(gt, 2.0)
    res_copy = copy.deepcopy(results)
    evaluate(gt, results)
    assert gt == gt_copy and results == res_copy


def test_results_for_unknown_images_refused(shapes):
    _, _, gt = shapes
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])


@pytest.mark.parametrize("ties", [False, True])
def test_per_image_map_equals_stats_and_raw_accumulate_on_resample(shapes, tmp_path, ties):
    """The vectorized re-accumulation equals pycocotools' accumulate on a resampled evalImgs
    (built as the issue's hint says), also with tied scores and a crowd box."""
    _, ann, gt = shapes
    gt = copy.deepcopy(gt)
    gt["annotations"][0]["iscrowd"] = 1
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    results = oracle_results(gt, 4.0, 3)
    results += [{**r, "bbox": [r["bbox"][0] + 9, *r["bbox"][1:]], "score": r["score"] / 2} for r in results[::2]]
    if ties:
        for r in results:
            r["score"] = round(r["score"], 1)
    r = evaluate(gt, results)
    assert r.per_image.map() == r.stats[0]

    raw = raw_cocoeval(ann, results, tmp_path)
    p = raw.params
    I, A, K = len(p.imgIds), len(p.areaRng), len(p.catIds)
    for seed in range(4):
        idx = np.random.default_rng(seed).integers(0, I, I)
        ev = copy.copy(raw)
        ev.evalImgs = [raw.evalImgs[k * A * I + a * I + i] for k in range(K) for a in range(A) for i in idx]
        q = copy.deepcopy(p)
        q.imgIds = list(range(I))
        ev.params, ev._paramsEval = q, copy.deepcopy(q)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
            ev.summarize()
        assert r.per_image.map(idx) == ev.stats[0]


def test_to_json_has_stats_categories_and_curves(shapes):
    _, _, gt = shapes
    j = evaluate(gt, oracle_results(gt, 3.0)).to_json()
    assert list(j["stats"]) == list(STAT_NAMES)
    assert [c["name"] for c in j["per_category"]] == ["red_box", "green_box"]
    assert len(j["pr_curves"]["0.50"]) == 101
    json.dumps(j)
