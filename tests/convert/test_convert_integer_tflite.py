"""Integer and float16 TFLite detectors through convert, quantize, build and add.

The SSD-shaped TFLite family (tests/fixtures/models.py ``make_ssd_tflite``) in float, float16,
full-integer (int8 tensors, the op fed float through DEQUANTIZE), uint8 post-processing inputs,
and uint8-qat (every tensor uint8, per-tensor uint8 weights, made from a fake-quant graph as the
zoo's quantized SSDs were), with fast and regular NMS, against the TFLite interpreter.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.clihelp import assert_user_error, run_cli, snapshot


@pytest.fixture(scope="module")
def converted(ssd_tflite, tmp_path_factory):
    from detzoo.convert import ConvertConfig, convert

    root = tmp_path_factory.mktemp("ssd_converted")
    cache = {}

    def get(precision, regular=False):
        if (precision, regular) not in cache:
            out = root / f"{precision}_{'regular' if regular else 'fast'}"
            cache[precision, regular] = (convert(ConvertConfig(source=ssd_tflite(precision, regular), out=out)), out)
        return cache[precision, regular]

    return get


def _onnx_nodes(path):
    import onnx

    from detzoo.onnxgraph import walk_nodes

    m = onnx.load(str(path))
    return m, list(walk_nodes(m.graph))


@pytest.mark.parametrize("regular", [False, True], ids=["fast-nms", "regular-nms"])
@pytest.mark.parametrize("precision", ["int8", "uint8", "uint8-qat"])
def test_integer_source_is_the_int8_variant_within_two_output_steps(converted, precision, regular):
    res, out = converted(precision, regular)
    m = json.loads((out / "manifest.json").read_text())
    assert res.variant == "int8" and sorted(m["variants"]) == ["int8"]
    v = m["variants"]["int8"]
    assert v["precision"] == "int8" and v["file"].endswith(".int8.onnx")
    assert v["settings"]["source_precision"] == "int8"
    steps = v["settings"]["source_output_steps"]
    assert steps["score_step"] == pytest.approx(1 / 256)  # the sigmoid's int8 output scale
    assert 0 < steps["box_step"] < 0.05
    parity = v["checks"]["parity"]
    assert parity["passed"] and parity["tolerance"]["steps"] == 2
    assert parity["tolerance"]["score_atol"] == pytest.approx(2 * steps["score_step"])
    assert parity["reference"] > 40 and parity["matched"] == parity["reference"]
    assert parity["unmatched_reference"] == parity["unmatched_candidate"] == 0
    assert parity["score_diff_steps"] <= 2 and parity["box_diff_steps"] <= 2
    assert "steps" in res.parity.summary()


@pytest.mark.parametrize("precision", ["int8", "uint8-qat"])
def test_residual_add_stays_within_two_steps(ssd_tflite, tmp_path, precision):
    """A requantizing residual ADD (inputs and output on three scales), as in SSD MobileNet v2."""
    from detzoo.convert import ConvertConfig, convert

    res = convert(ConvertConfig(source=ssd_tflite(precision, residual=True), out=tmp_path / "entry"))
    p = res.parity.to_json()
    assert res.variant == "int8" and p["passed"] and p["matched"] == p["reference"] > 40
    assert p["score_diff_steps"] <= 2 and p["box_diff_steps"] <= 2


@pytest.mark.parametrize("precision", ["int8", "uint8-qat"])
def test_integer_artifact_runs_integer_convolutions(converted, precision):
    """The artifact holds no int8 QDQ (onnxruntime leaves those in float on x86: the int8 model is
    relabelled, the QAT one is uint8 already), and onnxruntime's default optimization turns every
    quantized Conv into an integer QLinearConv."""
    import onnxruntime as ort
    from onnx import TensorProto

    res, out = converted(precision)
    model, nodes = _onnx_nodes(out / res.manifest.variants["int8"].file)
    inits = {}
    stack = [model.graph]
    while stack:
        g = stack.pop()
        inits.update({i.name: i for i in g.initializer})
        stack += [a.g for n in g.node for a in n.attribute if a.HasField("g")]
    qdq = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and not any(inits[n.input[2]].data_type == TensorProto.INT8 for n in qdq if len(n.input) > 2)
    convs = sum(n.op_type == "Conv" for n in nodes)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(out.parent / f"optimized-{precision}.onnx")
    ort.InferenceSession(str(out / res.manifest.variants["int8"].file), so, providers=["CPUExecutionProvider"])
    _, optimized = _onnx_nodes(out.parent / f"optimized-{precision}.onnx")
    assert sum(n.op_type == "QLinearConv" for n in optimized) == convs > 0
    assert not any(n.op_type == "Conv" for n in optimized)
    from detzoo.convert.inspect import inspect_onnx

    proof = inspect_onnx(out / res.manifest.variants["int8"].file)["int8"]  # exact on every CPU, from the file
    assert proof["saturation_safe"] and proof["u8_gemm_weights"] + proof["depthwise_weights"] == convs


@pytest.mark.parametrize("precision, expected", [("float", "fp32"), ("float16", "fp16")])
def test_float_and_float16_sources_convert_with_float_tolerance(converted, precision, expected):
    res, out = converted(precision)
    v = res.manifest.variants["fp32"]
    assert res.variant == "fp32" and v.settings["source_precision"] == expected
    assert "source_output_steps" not in v.settings
    assert res.parity.passed and res.parity.tolerance.steps is None and res.parity.tolerance.score_atol == 1e-4
    assert res.parity.agreement.matched == res.parity.agreement.reference > 40


def test_uint8_domain_is_a_relabelling(ssd_tflite):
    """Shifting int8 QDQ tensors to uint8 leaves every real value as it was (no fusion here)."""
    import onnx
    import onnxruntime as ort

    from detzoo.convert.core import run_tf2onnx
    from detzoo.convert.integer import to_uint8_domain
    from detzoo.source import open_source
    from tests.fixtures.models import ssd_synthetic_images

    with open_source(ssd_tflite("int8")) as src:
        model = run_tf2onnx(src, None, 17)
    shifted, report = to_uint8_domain(onnx.load_from_string(model.SerializeToString()))
    assert report.changed and report.tensors > 5 and report.initializers > 5
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    a = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(shifted.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for img in ssd_synthetic_images(4, 1):
        x = {a.get_inputs()[0].name: np.asarray(img)[None, :64, :64, :3].astype(np.uint8)}
        for p, q in zip(a.run(None, x), b.run(None, x)):
            np.testing.assert_array_equal(p, q)


def test_uint8_domain_leaves_int8_arithmetic_alone():
    """An int8 tensor that an op computes on (not DequantizeLinear, not a layout op): unchanged."""
    from onnx import TensorProto, helper

    from detzoo.convert.integer import to_uint8_domain

    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [3]),
             helper.make_tensor("one", TensorProto.INT8, [], [1])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("Add", ["q", "one"], ["q2"], name="add_on_int8"),
             helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    out, report = to_uint8_domain(model)
    assert not report.changed and "Add 'add_on_int8'" in report.reason
    assert out.SerializeToString() == before


def test_quantize_refuses_an_integer_source(converted, tmp_path):
    import shutil

    _, out = converted("int8")
    entry = tmp_path / "entry"
    shutil.copytree(out, entry)
    before = snapshot(entry)
    assert_user_error(run_cli("quantize", entry), 2, "integer source", "does not quantize it again")
    assert snapshot(entry) == before


def test_build_verifies_the_integer_conversion_against_its_tflite(ssd_tflite, tmp_path):
    from detzoo.build import BuildConfig, build

    res = build(BuildConfig(out=tmp_path / "entry", source=ssd_tflite("int8"), latency_runs=0))
    report = res.report.to_json()
    assert set(report["models"]) == {"source", "int8"}
    assert report["models"]["source"]["precision"] == "int8" and report["models"]["source"]["framework"] == "tflite"
    m = report["models"]["int8"]
    assert m["agreement"]["reference"] > 0 and m["fidelity"]["stats"]["AP"] >= 0.99
    assert not list((tmp_path / "entry").glob("*.fp16.onnx"))


def test_add_integer_conversion_to_a_float_entry(converted, tmp_path):
    """The zoo's int8 TFLite, converted, next to the float source's own variants: verify measures it
    against the float source."""
    import shutil

    from detzoo.add import add
    from detzoo.verify import VerifyConfig, verify

    (_, float_out), (int_res, int_out) = converted("float"), converted("int8")
    entry = tmp_path / "entry"
    shutil.copytree(float_out, entry)
    v = add(entry, int_out / int_res.manifest.variants["int8"].file, "int8-tflite").variant
    assert v.precision == "int8"
    report = verify(VerifyConfig(folder=entry, latency_runs=0, max_drop=100.0)).report.to_json()
    m = report["models"]["int8-tflite"]
    assert report["models"]["source"]["precision"] == "fp32"
    assert m["agreement"]["reference"] > 0 and 0 < m["fidelity"]["stats"]["AP"] <= 1
