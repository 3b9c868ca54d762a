"""Node order with outer-scope reads: onnxruntime's optimizer and quantizer can save a node after the
Loop whose body reads its output; ``sort_nodes`` restores an order onnx's checker (and so the
contract's batch Loop) accepts, without changing what the graph computes. On a real model:
tests/quantize/test_quantize_real.py (the default SSDLite's int8 build met it)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detzoo.quantize.install import sort_nodes


def _model_reading_a_later_value():
    """x -> Loop (one trip; its body adds ``v`` from the outer scope) -> y, with ``v = x * 2`` made
    by a node listed after the Loop, as onnxruntime's saved models list it."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v", "one"], ["y_body"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("y_body", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(np.ones((1, 3), np.float32), "one")])
    nodes = [helper.make_node("Loop", ["trips", ""], ["y_scan"], body=body, name="loop"),
             helper.make_node("Squeeze", ["y_scan", "axis0"], ["y"], name="squeeze"),
             helper.make_node("Mul", ["x", "two"], ["v"], name="late")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(np.array(1, np.int64), "trips"),
                     numpy_helper.from_array(np.array([0], np.int64), "axis0"),
                     numpy_helper.from_array(np.full((1, 3), 2, np.float32), "two")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_outer_scope_reads_are_ordered():
    model = _model_reading_a_later_value()
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    before = _run(model, x)
    assert sort_nodes(model.graph) == 1
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node] == ["late", "loop", "squeeze"]
    np.testing.assert_array_equal(_run(model, x), before)
    np.testing.assert_array_equal(before, x * 2 + 1)
    assert sort_nodes(model.graph) == 0  # a sorted graph keeps its order

