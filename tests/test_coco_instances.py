"""detzoo.coco.instances: reading and checking instances files, and the image records they name."""

import copy
import json

import numpy as np
import pytest

from detzoo.coco.evaluation import evaluate
from detzoo.coco.instances import check_instances, coco_records, first_image_ids, load_instances
from detzoo.errors import DetzooError
from tests.cocohelp import raw_cocoeval, shapes  # noqa: F401 (a fixture)


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
    raw = raw_cocoeval(ann, results, tmp_path)
    assert r.stats == [float(s) for s in raw.stats]
    if backend == "pycocotools":  # faster-coco-eval's precision differs in the last bit (see detzoo.coco.evaluation)
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
