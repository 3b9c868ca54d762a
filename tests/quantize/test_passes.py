"""The quantize passes on hand-built graphs: batch-1 proof, precision plan, fp16, the float guard."""

import numpy as np
import onnx
import pytest

from detzoo.errors import DetzooError
from detzoo.quantize.batch1 import run as specialize_batch1
from detzoo.quantize.fp16 import run as convert_to_fp16
from detzoo.quantize.int8 import guard_float_nodes
from detzoo.quantize.plan import Region, run as make_plan
from tests.quantize.graphs import dq_conv_model, map_loop_model, ort_run, tiny_detector


def _image(seed=0, hi=255):
    return np.random.default_rng(seed).integers(0, hi, (1, 4, 4, 3), dtype=np.uint8)


def test_map_loop_is_proven_single_pass_and_inlined_exactly():
    model = map_loop_model()
    out, report = specialize_batch1(model)
    assert [r.inlined for r in report.loops] == [True]
    assert "one iteration" in report.loops[0].reason
    assert not [n for n in out.graph.node if n.op_type == "Loop"]
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = _image()
    np.testing.assert_array_equal(ort_run(model, {"image": x})[0], ort_run(out, {"image": x})[0])


def test_data_dependent_loop_is_kept_with_its_reason():
    model = map_loop_model(data_dependent=True)
    out, report = specialize_batch1(model)
    assert [r.inlined for r in report.loops] == [False]
    assert "image content" in report.loops[0].reason
    assert [n.op_type for n in out.graph.node].count("Loop") == 1
    x = _image(hi=255)
    x[0, 0, 0, 0] = 250  # stops after the first image
    np.testing.assert_array_equal(ort_run(model, {"image": x})[0], ort_run(out, {"image": x})[0])


def test_batch_other_than_one_is_refused():
    model = map_loop_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(DetzooError, match="batch 4"):
        specialize_batch1(model)


def test_plan_regions_of_a_detector():
    plan = make_plan(tiny_detector())
    r = plan.regions
    assert {r[n] for n in ("to_float", "to_nchw", "norm_mul", "norm_sub")} == {Region.PREPROCESSING}
    assert {r[n] for n in ("conv1", "relu6_1", "conv2", "relu6_2", "box_head", "score_head")} == {Region.NETWORK}
    assert {r[n] for n in ("box_reshape", "box_exp", "box_decode")} == {Region.BOX_DECODING}
    assert {r[n] for n in ("score_reshape", "score_sigmoid")} == {Region.SCORE_CONVERSION}
    assert r["nms"] == Region.SELECTION
    js = plan.to_json()
    assert js["regions"]["network"]["precision"].startswith("reduced")
    assert "Exp" in js["regions"]["box_decoding"]["why"]
    plan.exclude("conv2", "test")
    assert "conv2" not in plan.reduced() and plan.to_json()["excluded"] == {"conv2": "test"}
    with pytest.raises(KeyError):
        plan.exclude("box_exp", "not a network node")


def test_fp16_converts_the_network_only_and_keeps_io_types():
    model = tiny_detector()
    plan = make_plan(model)
    half = convert_to_fp16(model, set(plan.reduced()))
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert inits["w1"] == onnx.TensorProto.FLOAT16 and inits["wb"] == onnx.TensorProto.FLOAT16
    assert inits["anchors"] == onnx.TensorProto.FLOAT and inits["scale"] == onnx.TensorProto.FLOAT
    # 'lo'/'hi' feed the network's Clips only: converted in place.
    assert inits["lo"] == onnx.TensorProto.FLOAT16
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(0).integers(0, 255, (1, 16, 16, 3), dtype=np.uint8)
    a, b = ort_run(model, {"image": x})[0], ort_run(half, {"image": x})[0]
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3)


def test_fp16_copies_an_initializer_shared_with_a_float_node():
    model = tiny_detector()
    for n in model.graph.node:
        if n.name == "box_scale":
            n.input[1] = "hi"  # now 'hi' feeds a network Clip and the float box decoding
    half = convert_to_fp16(model, set(make_plan(model).reduced()))
    inits = {i.name: i.data_type for i in half.graph.initializer}
    assert inits["hi"] == onnx.TensorProto.FLOAT and inits["hi/fp16"] == onnx.TensorProto.FLOAT16


def test_ort_requantizes_a_float_conv_after_dq_unless_guarded():
    """onnxruntime's WeightBiasQuantization gives such a Conv per-tensor int8 weights; the guard stops it."""
    model = dq_conv_model()
    x = np.random.default_rng(2).uniform(0, 4, (1, 8, 8, 8)).astype(np.float32)
    exact = ort_run(model, {"x": x}, level="disable")[0]
    optimized = ort_run(model, {"x": x}, level="all")[0]
    assert np.abs(optimized - exact).max() > 1e-3  # onnxruntime quantized the "float" weights
    guarded = onnx.ModelProto.FromString(model.SerializeToString())
    assert guard_float_nodes(guarded, {"float_conv"}) == ["float_conv"]
    np.testing.assert_allclose(ort_run(guarded, {"x": x}, level="all")[0], exact, rtol=1e-5, atol=1e-6)
