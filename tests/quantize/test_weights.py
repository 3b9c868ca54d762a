"""The portable int8 weight passes: saturation-safe bit widths, exactness in onnxruntime on this CPU
(whichever class it is), bias correction and AdaRound, and the artifact's own saturation proof."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from detzoo.quantize.weights import (PAIR_BOUND, Bits, WeightConfig, adaround, channel_scales,
                                     collect_layer_stats, requantize_weights, sample_patches, saturation_report)


def _qdq_conv(w: np.ndarray, w_scale: np.ndarray, q: np.ndarray, group: int, x_scale=0.02, y_scale=None,
              bias=None, in_hw=(6, 6), raw_output=False):
    """input float -> Q/DQ (u8, zp 0) -> Conv(DQ int8 per-channel weights) -> Q/DQ (u8) -> output.

    ``raw_output``: the Conv's float output itself (no output quantization)."""
    c_out, c_in_g, kh, kw = w.shape
    c_in = c_in_g * group
    y_scale = y_scale or 0.5
    inits = [numpy_helper.from_array(np.float32(x_scale), "xs"), numpy_helper.from_array(np.uint8(0), "xz"),
             numpy_helper.from_array(q.astype(np.int8), "wq"), numpy_helper.from_array(w_scale.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(c_out, np.int8), "wz"),
             numpy_helper.from_array(np.float32(y_scale), "ys"), numpy_helper.from_array(np.uint8(0), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0)]
    conv_in = ["xd", "wd"]
    if bias is not None:
        bs = (x_scale * w_scale).astype(np.float32)
        inits += [numpy_helper.from_array(np.round(bias / bs).astype(np.int32), "bq"),
                  numpy_helper.from_array(bs, "bs"), numpy_helper.from_array(np.zeros(c_out, np.int32), "bz")]
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0))
        conv_in.append("bd")
    nodes.append(helper.make_node("Conv", conv_in, ["y" if raw_output else "c"], name="conv", group=group,
                                  kernel_shape=[kh, kw], pads=[kh // 2, kw // 2, kh // 2, kw // 2]))
    if not raw_output:
        nodes += [helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, *in_hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_pair_bound_keeps_a_lone_large_weight_near_8_bits():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (64, 288)).astype(np.float32)
    w[:32, 0] = 3.0                       # a lone outlier: the second largest is ~10x smaller
    scale, qmax = channel_scales(w, Bits.PAIR_BOUND)
    q = np.clip(np.round(w / scale[:, None]), -qmax, qmax)
    top = np.sort(np.abs(q), axis=1)[:, ::-1]
    assert (top[:, 0] + top[:, 1]).max() <= PAIR_BOUND
    assert (top[:32, 0] > 100).all()      # more than 7 bits where only one weight is large
    seven, _ = channel_scales(w, Bits.SEVEN)
    assert (scale[:32] < seven[:32]).all()


def _extreme_pointwise(bits: Bits):
    rng = np.random.default_rng(1)
    c_in, c_out = 64, 16
    w = rng.uniform(0.5, 1.0, (c_out, c_in, 1, 1)).astype(np.float32)   # all positive: pairs add up
    scale, qmax = channel_scales(w.reshape(c_out, -1), bits)
    q = np.clip(np.round(w / scale[:, None, None, None]), -qmax, qmax)
    return w, scale, q


@pytest.mark.parametrize("kind", ["pointwise", "depthwise"])
def test_portable_weights_are_exact_in_onnxruntime_at_full_scale_activations(kind):
    """Activations at 255 and weights at the portable bound: the fused int8 kernel of this CPU matches
    the exact integer arithmetic within one output step (a saturated int16 pair would be off by
    thousands). Holds on every CPU class, so it holds here, whichever this is."""
    if kind == "pointwise":
        w, scale, q = _extreme_pointwise(Bits.PAIR_BOUND)
        group, c_in = 1, w.shape[1]
    else:
        c = 16
        w = np.random.default_rng(2).uniform(0.5, 1.0, (c, 1, 3, 3)).astype(np.float32)
        scale, qmax = channel_scales(w.reshape(c, -1), Bits.EIGHT)
        q = np.clip(np.round(w / scale[:, None, None, None]), -qmax, qmax)
        assert np.abs(q).max() == 127
        group, c_in = c, c
    x_scale = 0.02
    x = np.full((1, c_in, 6, 6), 255 * x_scale, np.float32)
    exact = np.einsum("oi,i->o", (q * scale[:, None, None, None]).reshape(q.shape[0], -1).astype(np.float64),
                      np.full(q[0].size, 255 * x_scale))  # the centre pixel sees a full window
    y_scale = float(exact.max() / 250)
    model = _qdq_conv(w, scale, q, group, x_scale, y_scale)
    fused = _run(model, x)[0, :, 3, 3]
    reference = _run(model, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)[0, :, 3, 3]  # float QDQ simulation
    np.testing.assert_allclose(fused, reference, atol=1.01 * y_scale)
    np.testing.assert_allclose(fused, np.clip(np.round(exact / y_scale), 0, 255) * y_scale, atol=1.01 * y_scale)
    assert saturation_report(model)["saturation_safe"]


def test_saturation_report_flags_full_8_bit_gemm_weights_only():
    w, scale, q = _extreme_pointwise(Bits.EIGHT)
    unsafe = saturation_report(_qdq_conv(w, scale, q, 1))
    assert not unsafe["saturation_safe"] and unsafe["unsafe_nodes"] == ["conv"] and unsafe["largest_pair_sum"] > 128
    w, scale, q = _extreme_pointwise(Bits.SEVEN)
    safe = saturation_report(_qdq_conv(w, scale, q, 1))
    assert safe["saturation_safe"] and safe["largest_pair_sum"] <= 128


def test_sample_patches_match_the_convolution():
    """The statistics see exactly the windows the convolution multiplies (pads, strides)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 4, 9, 9)).astype(np.float32)
    w = rng.normal(size=(5, 4, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]                                   # 1, 5, 5, 5
    p = sample_patches(x, node, (3, 3), 10 ** 6, np.random.default_rng(0))   # all 25 positions
    ours = p.reshape(len(p), -1) @ w.reshape(5, -1).T
    np.testing.assert_allclose(ours, y[0].reshape(5, -1).T, rtol=1e-5, atol=1e-5)


def test_adaround_beats_nearest_rounding_on_its_objective():
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.2, (24, 48)).astype(np.float32)
    x = rng.normal(size=(2000, 48)) @ rng.normal(size=(48, 48))      # correlated inputs
    gram = x.T @ x / len(x)
    scale, qmax = channel_scales(w, Bits.PAIR_BOUND)
    near = np.clip(np.round(w / scale[:, None]), -qmax, qmax)
    q = adaround(w, scale, qmax, gram, iters=300, pair_limit=PAIR_BOUND)

    def err(qq):
        d = (qq * scale[:, None] - w).astype(np.float64)
        return np.einsum("ck,kl,cl->", d, gram, d)

    assert np.array_equal(q, np.round(q)) and np.abs(q).max() <= qmax
    assert np.abs(q - np.floor(w / scale[:, None])).max() <= 1      # only ever rounds up or down
    assert err(q) < 0.8 * err(near)
    top = np.sort(np.abs(q), axis=1)[:, ::-1]
    assert (top[:, 0] + top[:, 1]).max() <= PAIR_BOUND


def _float_conv_model(tmp_path):
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.3, (8, 6, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, 8).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "float.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    feeds = [rng.uniform(0.5, 1.5, (1, 6, 8, 8)).astype(np.float32) for _ in range(8)]  # a mean far from 0
    return path, w, b, feeds


def test_bias_correction_removes_the_mean_shift_of_quantized_weights(tmp_path):
    path, w, b, feeds = _float_conv_model(tmp_path)
    fmodel = onnx.load(path)
    x_scale = 1.5 / 255
    scale, qmax = channel_scales(w.reshape(8, -1), Bits.SEVEN)
    q = np.clip(np.round(w / scale[:, None, None, None]), -qmax, qmax)   # replaced by requantize_weights
    stats = collect_layer_stats(path, {"conv"}, feeds)
    assert stats["conv"].count == 8 * 64 and stats["conv"].gram.shape == (54, 54)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = np.mean([sess.run(None, {"x": f})[0] for f in feeds], axis=(0, 1, 3, 4))
    shifts = {}
    for bc in (False, True):
        qdq = _qdq_conv(w, scale, q, 1, x_scale, bias=b, in_hw=(8, 8), raw_output=True)
        requantize_weights(qdq, fmodel, WeightConfig(gemm=Bits.SEVEN, bias_correction=bc), stats)
        out = np.mean([_run(qdq, f, ort.GraphOptimizationLevel.ORT_DISABLE_ALL) for f in feeds], axis=(0, 1, 3, 4))
        shifts[bc] = np.abs(out - ref).mean()
    assert shifts[True] < 0.3 * shifts[False]
