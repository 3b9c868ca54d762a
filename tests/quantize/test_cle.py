"""Cross-layer equalization on hand-built graphs: the outputs stay the same, the ranges become equal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detzoo.quantize.cle import Pair, channel_max, equalize, pairs

C = 8


def _w(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _model(act: str | None = "Relu", extra_consumer: str | None = None, expand: bool = False) -> onnx.ModelProto:
    """x [1, 8, 16, 16] -> [1x1 expand 4->8 -> Relu ->] depthwise 3x3 (channel ranges 1e-2..30) -> act -> 1x1 8->4.

    ``act``: "Relu", "Clip" (0, 6) or None; ``extra_consumer``: "conv" or "act" gives that tensor a
    second reader (a graph output).
    """
    rng = np.random.default_rng(0)
    mags = np.logspace(-2, 1.5, C)[rng.permutation(C)]
    inits = [_w("w_dw", rng.normal(size=(C, 1, 3, 3)) * mags[:, None, None, None]),
             _w("b_dw", rng.normal(size=C) * 0.1 + 2), _w("w_pw", rng.normal(size=(4, C, 1, 1))),
             _w("b_pw", rng.normal(size=4))]
    nodes, x, cin = [], "x", C
    if expand:
        cin = 4
        inits += [_w("w_ex", rng.normal(size=(C, cin, 1, 1)) * np.logspace(-1, 1, C)[:, None, None, None]),
                  _w("b_ex", rng.normal(size=C))]
        nodes += [helper.make_node("Conv", ["x", "w_ex", "b_ex"], ["ex"], name="expand"),
                  helper.make_node("Relu", ["ex"], ["ex_act"], name="expand_relu")]
        x = "ex_act"
    nodes.append(helper.make_node("Conv", [x, "w_dw", "b_dw"], ["dw"], name="dw", group=C, pads=[1, 1, 1, 1]))
    mid = "dw"
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["dw"], ["dw_act"], name="act"))
        mid = "dw_act"
    elif act == "Clip":
        inits += [_w("zero", 0.0), _w("six", 6.0)]
        nodes.append(helper.make_node("Clip", ["dw", "zero", "six"], ["dw_act"], name="act"))
        mid = "dw_act"
    nodes.append(helper.make_node("Conv", [mid, "w_pw", "b_pw"], ["y"], name="pw"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, list("nchw"))]
    if extra_consumer:
        second = "dw" if extra_consumer == "conv" else mid
        outputs.append(helper.make_tensor_value_info(second, TensorProto.FLOAT, list("nchw")))
    graph = helper.make_graph(nodes, "cle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 16, 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _feeds(model, n=3, scale=1.0):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    return [{"x": (rng.normal(size=shape) * scale).astype(np.float32)} for _ in range(n)]


def _run(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [sess.run(["y"], f)[0] for f in feeds]


def _saved(model, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def _inits(model):
    return {i.name: numpy_helper.to_array(i).copy() for i in model.graph.initializer}


def _ranges(model):
    w = _inits(model)
    r1 = np.abs(w["w_dw"]).reshape(C, -1).max(axis=1)
    r2 = np.abs(w["w_pw"]).max(axis=(0, 2, 3))
    return r1, r2


def _assert_same(before, after):
    for a, b in zip(before, after):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_relu_pair_equalized_exactly():
    """Depthwise -> Relu -> pointwise: same outputs, r1 == r2 per channel, the spread of r1 shrinks."""
    model = _model("Relu")
    feeds = _feeds(model)
    before, (r1, _) = _run(model, feeds), _ranges(model)
    assert pairs(model) == [Pair("dw", "act", "pw", None)]
    report = equalize(model)
    assert (report.pairs, report.scaled_channels) == (1, C)
    _assert_same(before, _run(model, feeds))
    r1_new, r2_new = _ranges(model)
    np.testing.assert_allclose(r1_new, r2_new, rtol=1e-5)
    assert r1_new.max() / r1_new.min() < (r1.max() / r1.min()) / 10


def test_chain_with_depthwise_conv2_iterates_exactly():
    """Expand -> Relu -> depthwise -> (no act) -> pointwise: both pairs, a depthwise Conv2, several rounds."""
    model = _model(None, expand=True)
    feeds = _feeds(model)
    before, (r1, _) = _run(model, feeds), _ranges(model)
    assert [(p.conv1, p.conv2) for p in pairs(model)] == [("expand", "dw"), ("dw", "pw")]
    report = equalize(model, iterations=4)
    assert report.pairs == 2
    _assert_same(before, _run(model, feeds))
    r1_new, _ = _ranges(model)
    assert r1_new.max() / r1_new.min() < (r1.max() / r1.min()) / 10


def test_relu6_with_act_max_stays_exact(tmp_path):
    """Clip(0, 6) with measured maxima: channels past 6 keep k = 1, others stay below 6 after scaling."""
    model = _model("Clip")
    feeds = _feeds(model, scale=0.3)
    before, w0 = _run(model, feeds), _inits(model)
    am = channel_max(_saved(model, tmp_path), ["dw"], feeds)
    reached = am["dw"] >= 6
    assert 0 < reached.sum() < C  # both cases occur
    report = equalize(model, act_max=am, iterations=2)
    assert report.pairs == 1 and report.skipped["channel: k clamped to M / act_max"] > 0
    _assert_same(before, _run(model, feeds))
    w = _inits(model)
    np.testing.assert_array_equal(w["w_dw"][reached], w0["w_dw"][reached])
    assert not np.array_equal(w["w_dw"][~reached], w0["w_dw"][~reached])
    assert (channel_max(_saved(model, tmp_path), ["dw"], feeds)["dw"][~reached] <= 6 * (1 + 1e-6)).all()


def test_channel_max_matches_numpy(tmp_path):
    model = _model("Clip", extra_consumer="conv")  # "dw" is a graph output already
    feeds = _feeds(model)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = np.max([sess.run(["dw"], f)[0].max(axis=(0, 2, 3)) for f in feeds], axis=0)
    np.testing.assert_array_equal(channel_max(_saved(model, tmp_path), ["dw"], feeds)["dw"], want)


def test_relu6_without_act_max_skipped():
    model = _model("Clip")
    w0 = _inits(model)
    report = equalize(model)
    assert report.pairs == 0 and report.scaled_channels == 0
    assert report.skipped["Clip without act_max"] == 1
    assert all(np.array_equal(v, w0[k]) for k, v in _inits(model).items())


@pytest.mark.parametrize("where", ["conv", "act"])
def test_second_consumer_skipped(where):
    """A second reader of Conv1's output (or of the Relu's) would see the rescaled tensor: no pair."""
    model = _model("Relu", extra_consumer=where)
    w0 = _inits(model)
    assert pairs(model) == []
    report = equalize(model, iterations=2)
    assert report.pairs == 0 and report.skipped["output has several consumers"] == 1
    assert all(np.array_equal(v, w0[k]) for k, v in _inits(model).items())
    assert report.to_json()["pairs"] == 0
