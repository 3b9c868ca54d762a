"""Shared by the detzoo.coco tests: the shapes set with its ground truth loaded, results made from
that ground truth, and raw pycocotools run on files as a user would run it."""

import contextlib
import io
import json

import pytest

from tests.fixtures.dataset import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(images_dir, annotations_json, ground truth dict); import it into a test module to use it."""
    images_dir, ann = make_shapes_dataset(tmp_path_factory.mktemp("shapes"))
    return images_dir, ann, json.loads(ann.read_text())


def oracle_results(gt, shift=0.0, drop_every=0):
    """Results equal to the ground truth, boxes shifted by ``shift`` px, scores distinct."""
    out = []
    for n, a in enumerate(sorted(gt["annotations"], key=lambda a: a["id"])):
        if drop_every and n % drop_every == 0:
            continue
        x, y, w, h = a["bbox"]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": [x + shift, y + shift / 2, w, h], "score": 0.99 - 0.001 * n})
    return out


def raw_cocoeval(gt_path, results, tmp_path, img_ids=None):
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
