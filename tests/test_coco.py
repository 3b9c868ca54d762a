"""detzoo.coco against raw pycocotools on ground truth the tests construct."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from detzoo.coco import (STAT_NAMES, bootstrap_drop, check_instances, coco_records, evaluate, fidelity,
                         first_image_ids, load_instances, reference_ground_truth)
from detzoo.detections import Detections
from detzoo.errors import DetzooError
from tests.fixtures.dataset import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    images_dir, ann = make_shapes_dataset(tmp_path_factory.mktemp("shapes"))
    return images_dir, ann, json.loads(ann.read_text())


def _oracle(gt, shift=0.0, drop_every=0):
    """Results equal to the ground truth, boxes shifted by ``shift`` px, scores distinct."""
    out = []
    for n, a in enumerate(sorted(gt["annotations"], key=lambda a: a["id"])):
        if drop_every and n % drop_every == 0:
            continue
        x, y, w, h = a["bbox"]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": [x + shift, y + shift / 2, w, h], "score": 0.99 - 0.001 * n})
    return out


def _raw(gt_path, results, tmp_path, img_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(gt_path))
        d = g.loadRes(str(res_path))
        e = COCOeval(g, d, "bbox")
        if img_ids is not None:
            e.params.imgIds = img_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def test_stat_names_in_pycocotools_order():
    assert STAT_NAMES == ("AP", "AP50", "AP75", "APs", "APm", "APl",
                          "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def test_oracle_is_exactly_one(shapes):
    _, _, gt = shapes
    r = evaluate(gt, _oracle(gt))
    assert r.stats[0] == 1.0 and r.stats[1] == 1.0 and r.stats[8] == 1.0
    assert set(r.per_category) == {1, 3} and all(v == 1.0 for v in r.per_category.values())
    assert r.num_images == len(gt["images"])


def test_empty_detections_are_zero(shapes):
    _, _, gt = shapes
    r = evaluate(gt, [])
    oracle = evaluate(gt, _oracle(gt))
    # 0 wherever the oracle measures something; -1 (nothing to measure: no large boxes) stays -1
    assert r.stats == [-1.0 if s == -1.0 else 0.0 for s in oracle.stats]
    assert r.stats[0] == 0.0 and oracle.stats[5] == -1.0
    assert r.per_image.map() == 0.0


@pytest.mark.parametrize("shift,drop_every", [(3.0, 0), (1.5, 4), (6.0, 3)])
def test_shifted_boxes_equal_raw_pycocotools(shapes, tmp_path, shift, drop_every):
    _, ann, gt = shapes
    results = _oracle(gt, shift, drop_every)
    r = evaluate(gt, results)
    raw = _raw(ann, results, tmp_path)
    assert r.stats == [float(s) for s in raw.stats]  # to the last digit
    assert 0.0 < r.stats[0] < 1.0
    np.testing.assert_array_equal(r.precision, raw.eval["precision"])
    np.testing.assert_array_equal(r.recall, raw.eval["recall"])


def test_image_subset_equals_raw_pycocotools(shapes, tmp_path):
    _, ann, gt = shapes
    results = _oracle(gt, 2.0, 5)
    ids = first_image_ids(gt, 10)
    assert ids == sorted(i["id"] for i in gt["images"])[:10]
    r = evaluate(gt, results, ids)
    assert r.num_images == 10
    assert r.stats == [float(s) for s in _raw(ann, results, tmp_path, ids).stats]


def test_inputs_not_mutated(shapes):
    _, _, gt = shapes
    gt_copy, results = copy.deepcopy(gt), _oracle(gt, 2.0)
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
    results = _oracle(gt, 4.0, 3)
    results += [{**r, "bbox": [r["bbox"][0] + 9, *r["bbox"][1:]], "score": r["score"] / 2} for r in results[::2]]
    if ties:
        for r in results:
            r["score"] = round(r["score"], 1)
    r = evaluate(gt, results)
    assert r.per_image.map() == r.stats[0]

    raw = _raw(ann, results, tmp_path)
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


def test_bootstrap_drop_is_paired(shapes):
    _, _, gt = shapes
    a = evaluate(gt, _oracle(gt))
    same = bootstrap_drop(a, evaluate(gt, _oracle(gt)), 50)
    assert same["low"] == same["high"] == 0.0  # identical models: every resample drops 0
    worse = evaluate(gt, _oracle(gt, 4.0, 3))
    ci = bootstrap_drop(a, worse, 200, seed=1)
    drop = a.stats[0] - worse.stats[0]
    assert 0 < ci["low"] <= drop <= ci["high"] < 1
    assert ci == bootstrap_drop(a, worse, 200, seed=1)  # deterministic


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


def test_to_json_has_stats_categories_and_curves(shapes):
    _, _, gt = shapes
    j = evaluate(gt, _oracle(gt, 3.0)).to_json()
    assert list(j["stats"]) == list(STAT_NAMES)
    assert [c["name"] for c in j["per_category"]] == ["red_box", "green_box"]
    assert len(j["pr_curves"]["0.50"]) == 101
    json.dumps(j)


# --- instances files ---------------------------------------------------------------------------

def test_records_first_n_by_ascending_id(shapes):
    images_dir, ann, _ = shapes
    gt = load_instances(ann)
    recs = coco_records(gt, images_dir, limit=5)
    ids = [r.image_id for r in recs]
    assert ids == sorted(ids) and ids == first_image_ids(gt)[:5]
    by_id = {i["id"]: i["file_name"] for i in gt["images"]}
    assert all(r.path == images_dir / by_id[r.image_id] and r.path.is_file() for r in recs)


def test_records_refuse_missing_files_and_escapes(shapes, tmp_path):
    images_dir, ann, gt = shapes
    bad = copy.deepcopy(gt)
    bad["images"][0]["file_name"] = "nope.png"
    with pytest.raises(DetzooError, match="nope.png"):
        coco_records(bad, images_dir)
    bad["images"][0]["file_name"] = "../x.png"
    with pytest.raises(DetzooError, match="inside the images folder"):
        coco_records(bad, images_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetzooError, match="not in"):
        coco_records(gt, tmp_path / "empty")


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not JSON"),
    ("[1, 2]", "JSON list"),
    ('{"images": []}', "'annotations'"),
    ('{"annotations": []}', "'images'"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1, "image_id": 2, '
     '"category_id": 1, "bbox": [0, 0, 1, 1]}]}', "image id 2"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 0, "image_id": 1, '
     '"category_id": 1, "bbox": [0, 0, 1, 1]}]}', "not positive"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"id": 1, "image_id": 1, '
     '"category_id": 1, "bbox": [0, 0, 1]}]}', "bbox"),
])
def test_bad_instances_files(tmp_path, content, needle):
    p = tmp_path / "ann.json"
    p.write_text(content)
    with pytest.raises(DetzooError, match=needle):
        load_instances(p)


def _past_the_border(gt):
    """``gt`` with five boxes moved to overhang their image: by 1.5, 2, 1.25 and 2 px (counted) and
    0.5 px (within COCO's rounding, not counted); plus detections of every box clipped to its image,
    as a detector reports them."""
    gt = copy.deepcopy(gt)
    size = {i["id"]: (i["width"], i["height"]) for i in gt["images"]}
    anns = sorted(gt["annotations"], key=lambda a: a["id"])
    for a, (side, over) in zip(anns, [("left", 1.5), ("right", 2.0), ("top", 1.25), ("bottom", 2.0),
                                      ("right", 0.5)]):
        x, y, w, h = a["bbox"]
        W, H = size[a["image_id"]]
        x, y = {"left": (-over, y), "right": (W - w + over, y), "top": (x, -over), "bottom": (x, H - h + over)}[side]
        a["bbox"] = [x, y, w, h]
    results = []
    for n, a in enumerate(anns):
        x, y, w, h = a["bbox"]
        W, H = size[a["image_id"]]
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.99 - 0.001 * n})
    return gt, results


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_boxes_past_the_image_evaluated_as_pycocotools_does(shapes, tmp_path, backend):
    """Boxes reaching 1-2 px past their image are neither refused, clipped nor dropped: the 12 stats
    (and precision) equal raw pycocotools' on the same file, whichever backend evaluates."""
    if backend == "faster-coco-eval":
        pytest.importorskip("faster_coco_eval")
    _, _, gt = shapes
    bad, results = _past_the_border(gt)
    ann = tmp_path / "past.json"
    ann.write_text(json.dumps(bad))
    loaded = load_instances(ann)
    assert [a["bbox"] for a in loaded["annotations"]] == [a["bbox"] for a in bad["annotations"]]
    r = evaluate(loaded, results, keep_per_image=backend == "pycocotools", backend=backend)
    raw = _raw(ann, results, tmp_path)
    assert r.stats == [float(s) for s in raw.stats]
    if backend == "pycocotools":  # faster-coco-eval's precision differs in the last bit (see detzoo.coco)
        np.testing.assert_array_equal(r.precision, raw.eval["precision"])
    # the clipped detections miss the overhanging boxes at high IoU: clipping the ground truth would show
    assert 0.9 < r.stats[0] < 1.0 and r.stats[1] == pytest.approx(1.0, abs=1e-12)


def test_boxes_past_the_image_counted_in_one_warning(shapes, tmp_path):
    _, _, gt = shapes
    ann = tmp_path / "past.json"
    ann.write_text(json.dumps(_past_the_border(gt)[0]))
    w = load_instances(ann).warnings
    assert w == ["past.json: 4 annotation box(es) extend more than 1 px past their image (largest overhang 2 px); "
                 "evaluated as pycocotools does, unchanged"]
    assert load_instances(shapes[1]).warnings == []  # boxes inside their images: no warning


def test_missing_area_iscrowd_categories_filled():
    d = check_instances({"images": [{"id": 1, "file_name": "a.png"}],
                         "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 5]}]})
    assert d["annotations"][0]["area"] == 20 and d["annotations"][0]["iscrowd"] == 0
    assert d["categories"] == [{"id": 7, "name": "7"}]
