"""faster-coco-eval gives pycocotools' 12 stats wherever detzoo uses it (evaluations without
per-image matches): checked on the cases tests/test_coco.py checks and on a COCO-like set."""

import copy
import json

import numpy as np
import pytest

from detzoo.coco import evaluate, evaluator, first_image_ids
from tests.fixtures.dataset import make_shapes_dataset
from tests.cocohelp import oracle_results

pytest.importorskip("faster_coco_eval")


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    _, ann = make_shapes_dataset(tmp_path_factory.mktemp("shapes"))
    return json.loads(ann.read_text())


def _cases(gt):
    crowd = copy.deepcopy(gt)
    crowd["annotations"][0]["iscrowd"] = 1
    extra = oracle_results(crowd, 4.0, 3)
    extra += [{**r, "bbox": [r["bbox"][0] + 9, *r["bbox"][1:]], "score": r["score"] / 2} for r in extra[::2]]
    ties = [{**r, "score": round(r["score"], 1)} for r in extra]
    return {
        "oracle": (gt, oracle_results(gt), None),
        "empty": (gt, [], None),
        "shift3": (gt, oracle_results(gt, 3.0), None),
        "shift1.5-drop4": (gt, oracle_results(gt, 1.5, 4), None),
        "shift6-drop3": (gt, oracle_results(gt, 6.0, 3), None),
        "subset": (gt, oracle_results(gt, 2.0, 5), first_image_ids(gt, 10)),
        "crowd-duplicates": (crowd, extra, None),
        "crowd-ties": (crowd, ties, None),
    }


def _same(gt, results, ids):
    fast = evaluate(gt, results, ids, keep_per_image=False)
    ref = evaluate(gt, results, ids, keep_per_image=True)
    assert fast.evaluator == "faster-coco-eval" and ref.evaluator == "pycocotools"
    assert fast.stats == ref.stats  # the 12 stats, to the last digit
    np.testing.assert_allclose(fast.precision, ref.precision, rtol=0, atol=4e-16)  # see detzoo.coco.evaluation
    np.testing.assert_array_equal(fast.recall, ref.recall)
    assert fast.per_category.keys() == ref.per_category.keys()
    for c in ref.per_category:
        assert abs(fast.per_category[c] - ref.per_category[c]) < 1e-15
    assert fast.num_detections == ref.num_detections and fast.num_images == ref.num_images


def test_backend_choice():
    assert evaluator(keep_per_image=True) == "pycocotools"
    assert evaluator(keep_per_image=False) == "faster-coco-eval"
    with pytest.raises(ValueError, match="per-image"):
        evaluate({"images": [], "annotations": [], "categories": []}, [], backend="faster-coco-eval")


@pytest.mark.parametrize("case", ["oracle", "empty", "shift3", "shift1.5-drop4", "shift6-drop3", "subset",
                                  "crowd-duplicates", "crowd-ties"])
def test_same_stats_as_pycocotools(gt, case):
    _same(*_cases(gt)[case])


def test_same_stats_on_a_coco_like_set():
    from benchmarks.coco_eval_backends import synthetic

    gt, results = synthetic(150, 100)  # 80 categories, 100 detections per image, crowd boxes
    _same(gt, results, None)
