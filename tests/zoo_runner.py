"""A model-zoo runner written the way the zoo's own runners are, to check artifacts from outside detzoo.

OpenCV reads each COCO image, converts BGR to RGB, resizes it to a fixed size (INTER_LINEAR),
stacks ``batch`` of them as uint8 NHWC, runs the ONNX model on onnxruntime and reads the outputs
by position (num_detections, detection_boxes, detection_scores, detection_classes), takes the
classes as COCO category ids, scales the normalized boxes back to the original image and scores
the lot with pycocotools. Nothing here imports detzoo.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def zoo_map(model: Path, images: Path, annotations: Path, batch: int = 1, size=(640, 640)) -> np.ndarray:
    """The 12 COCO stats the runner prints for ``model`` on every annotated image."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    ids = sorted(coco.getImgIds())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    results = []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        pixels, shapes = [], []
        for i in chunk:
            bgr = cv2.imread(str(Path(images) / coco.loadImgs(i)[0]["file_name"]))
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            shapes.append(rgb.shape[:2])
            pixels.append(cv2.resize(rgb, (size[1], size[0])))
        num, boxes, scores, classes = sess.run(None, {name: np.stack(pixels)})[:4]
        for k, i in enumerate(chunk):
            h, w = shapes[k]
            for j in range(int(num[k])):
                ymin, xmin, ymax, xmax = (float(v) for v in boxes[k, j])
                results.append({"image_id": i, "category_id": int(classes[k, j]), "score": float(scores[k, j]),
                                "bbox": [xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h]})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(results) if results else COCO()
        ev = COCOeval(coco, dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)
