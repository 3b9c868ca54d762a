"""inspect names the detector family from the graph's structure (the real graphs: test_convert_real.py,
tests/test_tf2zoo_stages.py); here each rule and the order they are tried in."""

from collections import Counter

import pytest

from detzoo.convert.inspect import family


@pytest.mark.parametrize("ops,names,want", [
    ({"TFLite_Detection_PostProcess": 1, "CONV_2D": 55}, (), "single-stage"),
    ({"CropAndResize": 1, "NonMaxSuppressionV3": 2}, (), "two-stage"),          # TF1 Faster R-CNN
    ({"NonMaxSuppressionV5": 10, "MatMul": 40},                                  # TF2: matmul crops
     ("FirstStageBoxPredictor/conv", "SecondStagePostprocessor/nms"), "two-stage"),
    ({"NonMaxSuppressionV5": 8, "Conv2D": 55}, ("BoxPredictor/ClassPredictor",), "single-stage"),
    ({"MaxPool": 1, "TopKV2": 1, "Conv2D": 80}, (), "center-based"),
    ({"Conv2D": 3, "Softmax": 1}, (), "unknown"),
])
def test_family_from_structure(ops, names, want):
    got = family(Counter(ops), names)
    assert got["name"] == want, got
    assert got["evidence"]
