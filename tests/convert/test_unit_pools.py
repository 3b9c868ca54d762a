"""Kernel-1 pools with SAME padding (slim resnet_v1's shortcut subsampling, as tf2onnx writes it in TF1
Faster R-CNN ResNets) run at every onnxruntime optimization level once converted."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from detzoo.convert.core import valid_unit_pools


def _pool(kernel, pad=b"SAME_UPPER"):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kernel, kernel], strides=[2, 2],
                            auto_pad=pad.decode())
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


X = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32)


def _run(model, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    x = X
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_kernel_1_same_pool_becomes_valid_with_the_same_output():
    model = _pool(1)
    want = X[:, :, ::2, ::2]  # a 1x1 window at stride 2 takes every other pixel
    with pytest.raises(Exception, match="non-negative"):  # what made convert's noise run fail
        _run(model, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    assert valid_unit_pools(model) == 1
    onnx.checker.check_model(model)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        np.testing.assert_array_equal(_run(model, level), want)


def test_wider_pools_keep_their_padding():
    model = _pool(3)
    assert valid_unit_pools(model) == 0
    assert [a.s for a in model.graph.node[0].attribute if a.name == "auto_pad"] == [b"SAME_UPPER"]
