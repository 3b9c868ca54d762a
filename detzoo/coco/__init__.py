"""COCO box evaluation and COCO data, shared by verify and accuracy-aware quantization.

One module a job: ``evaluation`` (pycocotools' numbers; faster-coco-eval where no per-image
matches are needed), ``bootstrap`` (paired bootstrap of an mAP drop), ``reference`` (a reference
model's detections as ground truth: fidelity), ``instances`` (instances files, image records).

Owns: nothing but these re-exports, so ``from detzoo.coco import X`` keeps working. Does not
touch: anything; code lives in the modules.
"""

from detzoo.coco.bootstrap import bootstrap_drop
from detzoo.coco.evaluation import (STAT_NAMES, STAT_ROWS, CocoResult, PerImageEval, detections_to_results, evaluate,
                                    evaluate_detections, evaluator)
from detzoo.coco.instances import (OVERHANG_TOLERANCE, Instances, check_instances, coco_records, first_image_ids,
                                   load_instances)
from detzoo.coco.reference import fidelity, reference_ground_truth

__all__ = [
    "OVERHANG_TOLERANCE", "STAT_NAMES", "STAT_ROWS", "CocoResult", "Instances", "PerImageEval", "bootstrap_drop",
    "check_instances", "coco_records", "detections_to_results", "evaluate", "evaluate_detections", "evaluator",
    "fidelity", "first_image_ids", "load_instances", "reference_ground_truth",
]
