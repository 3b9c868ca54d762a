"""Canonical form: equal computations serialize to equal bytes, whatever the node order and names."""

import random

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from detzoo.onnxcanon import canonicalize


def _model(order_seed: int, suffix: str):
    """y = relu(x*w + b) + relu(x*w + b) (a duplicate branch), plus a Loop summing 3 times."""
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), f"w{suffix}")
    b = numpy_helper.from_array(np.ones(4, dtype=np.float32), f"bias__{suffix}")
    body = helper.make_graph(
        [helper.make_node("Add", [f"acc_in{suffix}", f"r1{suffix}"], [f"acc_out{suffix}"], name=f"add_body{suffix}"),
         helper.make_node("Identity", [f"cond_in{suffix}"], [f"cond_out{suffix}"], name=f"id{suffix}")],
        "body", [helper.make_tensor_value_info(f"i{suffix}", TensorProto.INT64, []),
                 helper.make_tensor_value_info(f"cond_in{suffix}", TensorProto.BOOL, []),
                 helper.make_tensor_value_info(f"acc_in{suffix}", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info(f"cond_out{suffix}", TensorProto.BOOL, []),
         helper.make_tensor_value_info(f"acc_out{suffix}", TensorProto.FLOAT, [1, 4])])
    nodes = [
        helper.make_node("Mul", ["x", f"w{suffix}"], [f"m1{suffix}"], name=f"mul_a{suffix}"),
        helper.make_node("Mul", ["x", f"w{suffix}"], [f"m2{suffix}"], name=f"mul_b{suffix}"),
        helper.make_node("Add", [f"m1{suffix}", f"bias__{suffix}"], [f"a1{suffix}"], name=f"s/add_1{suffix}"),
        helper.make_node("Add", [f"m2{suffix}", f"bias__{suffix}"], [f"a2{suffix}"], name=f"s/add_2{suffix}"),
        helper.make_node("Relu", [f"a1{suffix}"], [f"r1{suffix}"], name=f"relu1{suffix}"),
        helper.make_node("Relu", [f"a2{suffix}"], [f"r2{suffix}"], name=f"relu2{suffix}"),
        helper.make_node("Add", [f"r1{suffix}", f"r2{suffix}"], ["y"], name=f"out{suffix}"),
        helper.make_node("Loop", ["trip", "", f"r2{suffix}"], ["z"], name=f"loop{suffix}", body=body),
    ]
    head, tail = nodes[:6], nodes[6:]
    random.Random(order_seed).shuffle(head)  # any topological order of the independent part
    head.sort(key=lambda n: ["Mul", "Add", "Relu"].index(n.op_type))  # still topologically sorted
    trip = numpy_helper.from_array(np.array(3, dtype=np.int64), "trip")
    g = helper.make_graph(head + tail, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], [w, b, trip][::order_seed % 2 * 2 - 1])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m, x):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_reordered_renamed_models_canonicalize_to_the_same_bytes():
    a, b = _model(1, "__7"), _model(2, "__93")
    assert a.SerializeToString() != b.SerializeToString()
    x = np.array([[1, -2, 3, -4]], dtype=np.float32)
    before = _run(a, x)
    ca, cb = canonicalize(a), canonicalize(b)
    onnx.checker.check_model(ca)
    assert ca.SerializeToString() == cb.SerializeToString()
    for u, v in zip(before, _run(ca, x)):
        np.testing.assert_array_equal(u, v)
    # the duplicate Mul/Add/Relu branch was merged; IO names are untouched
    assert sum(n.op_type == "Mul" for n in ca.graph.node) == 1
    assert [i.name for i in ca.graph.input] == ["x"] and [o.name for o in ca.graph.output] == ["y", "z"]
