"""Hand-built ONNX graphs for the quantize passes' unit tests (no TensorFlow, milliseconds)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def _const(name, value, dtype=None):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def map_loop_model(data_dependent: bool = False) -> onnx.ModelProto:
    """uint8 [N, 4, 4, 3] -> a map_fn-style Loop over the batch doubling each image -> float [N, 4, 4, 3].

    With ``data_dependent`` the loop instead continues while an image's maximum stays below 200:
    its trip count then depends on pixel values, which no static proof can bound.
    """
    body_nodes = [
        helper.make_node("Add", ["i_in", "one"], ["i_next"]),
        helper.make_node("Gather", ["xf", "i_in"], ["img"], axis=0),
        helper.make_node("Mul", ["img", "two"], ["doubled"]),
        helper.make_node("Less", ["i_next", "n"], ["more"]),
    ]
    cond_out = "more"
    if data_dependent:
        body_nodes += [helper.make_node("ReduceMax", ["img"], ["mx"], keepdims=0),
                       helper.make_node("Less", ["mx", "limit"], ["small"])]
        cond_out = "small"
    body_nodes.append(helper.make_node("Identity", [cond_out], ["cond_out"]))
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("i_in", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("i_next", TensorProto.INT64, []),
         helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [4, 4, 3])],
        [_const("one", 1, np.int64), _const("two", 2.0, np.float32), _const("limit", 200.0, np.float32)])
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Shape", ["xf"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero1", "one1"], ["n1"]),
        helper.make_node("Squeeze", ["n1", "zero1"], ["n"]),
        helper.make_node("Less", ["zero", "n"], ["start"]),
        helper.make_node("Loop", ["max_trip", "start", "zero"], ["i_final", "stacked"], name="map_loop", body=body),
        helper.make_node("Identity", ["stacked"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "map", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 4, 4, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 4, 3])],
        [_const("max_trip", np.iinfo(np.int64).max, np.int64), _const("zero", 0, np.int64),
         _const("zero1", [0], np.int64), _const("one1", [1], np.int64)])
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    return model


def tiny_detector() -> onnx.ModelProto:
    """uint8 image -> normalize -> 2 Conv+Relu6 -> box head (Exp decode with anchors) and score head -> NMS.

    Just enough structure for the precision plan: preprocessing, network, box decoding, score
    conversion, selection. Outputs: boxes [1, K, 4] float, selected indices int64.
    """
    rng = np.random.default_rng(0)
    k = 8 * 8
    inits = [
        _const("scale", 1 / 127.5, np.float32), _const("shift", 1.0, np.float32),
        _const("w1", rng.normal(0, 0.3, (8, 3, 3, 3)), np.float32), _const("b1", rng.normal(0, 0.1, 8), np.float32),
        _const("w2", rng.normal(0, 0.3, (8, 8, 3, 3)), np.float32), _const("b2", rng.normal(0, 0.1, 8), np.float32),
        _const("wb", rng.normal(0, 0.1, (4, 8, 1, 1)), np.float32), _const("ws", rng.normal(0, 0.1, (1, 8, 1, 1)),
                                                                           np.float32),
        _const("lo", 0.0, np.float32), _const("hi", 6.0, np.float32),
        _const("anchors", rng.uniform(0.1, 0.9, (1, k, 4)), np.float32),
        _const("shape_b", [1, 4, k], np.int64), _const("shape_s", [1, 1, k], np.int64),
        _const("max_out", [10], np.int64), _const("iou", [0.5], np.float32), _const("thr", [0.1], np.float32),
        _const("half", 0.5, np.float32),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Transpose", ["xf"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Mul", ["nchw", "scale"], ["scaled"], name="norm_mul"),
        helper.make_node("Sub", ["scaled", "shift"], ["normed"], name="norm_sub"),
        helper.make_node("Conv", ["normed", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6_1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6_2"),
        helper.make_node("Conv", ["r2", "wb"], ["enc"], name="box_head"),
        helper.make_node("Conv", ["r2", "ws"], ["logits"], name="score_head"),
        helper.make_node("Reshape", ["enc", "shape_b"], ["enc_flat"], name="box_reshape"),
        helper.make_node("Transpose", ["enc_flat"], ["enc_t"], perm=[0, 2, 1], name="box_transpose"),
        helper.make_node("Mul", ["enc_t", "half"], ["enc_s"], name="box_scale"),
        helper.make_node("Exp", ["enc_s"], ["growth"], name="box_exp"),
        helper.make_node("Mul", ["growth", "anchors"], ["boxes"], name="box_decode"),
        helper.make_node("Reshape", ["logits", "shape_s"], ["logits_flat"], name="score_reshape"),
        helper.make_node("Sigmoid", ["logits_flat"], ["scores"], name="score_sigmoid"),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"], ["selected"], name="nms"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_detector", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 16, 16, 3])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, k, 4]),
         helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])], inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    return model


def dq_conv_model(depthwise: bool = True) -> onnx.ModelProto:
    """x -> Q -> DQ -> float Conv (channel scales 1000x apart) -> Q -> DQ: a float node between quantized ones."""
    rng = np.random.default_rng(1)
    c = 8
    group = c if depthwise else 1
    w = rng.normal(0, 1, (c, c // group, 3, 3)).astype(np.float32)
    w *= (10.0 ** np.linspace(-3, 0, c, dtype=np.float32))[:, None, None, None]  # 1000x spread across channels
    inits = [_const("w", w), _const("b", np.zeros(c), np.float32), _const("s", 0.02, np.float32),
             _const("zp", 0, np.uint8), _const("s_out", 0.05, np.float32), _const("zp_out", 128, np.uint8)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq"),
             helper.make_node("Conv", ["xdq", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=group, name="float_conv"),
             helper.make_node("QuantizeLinear", ["c", "s_out", "zp_out"], ["cq"], name="q_out"),
             helper.make_node("DequantizeLinear", ["cq", "s_out", "zp_out"], ["y"], name="dq_out")]
    graph = helper.make_graph(nodes, "dq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, feeds: dict, level: str = "all") -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
