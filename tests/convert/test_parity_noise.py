"""Parity's default tolerance is calibrated on the artifact's own float noise, and still catches bugs.

The float noise of a conversion depends on the network: about 2e-5 on the trained SSDLite, 2e-4 on
the TF2 OD API SSD fixture (BENCHMARKS.md). convert measures it on every float artifact (one-ulp
weights, onnxruntime's basic optimization level) and sets the atols at ``noise_factor`` times it,
never below 1e-4; injected conversion bugs (tests/fixtures/onnxbugs.py) still fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detzoo.convert.parity import FLOAT_ATOL, ParityTolerance, perturb_weights
from detzoo.detections import Agreement
from detzoo.errors import DetzooError


def _model_with_every_kind_of_tensor():
    """Weights (an initializer, a Constant, one in an If branch, each feeding a MatMul), a float table
    that is not a weight (a coordinate grid feeding Mul) and an integer one."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((4, 8)).astype(np.float32)
    big[0, 0] = 0.0
    inits = [numpy_helper.from_array(big, "big"),
             numpy_helper.from_array(np.arange(8, dtype=np.float32) + 0.5, "grid"),   # not a weight
             numpy_helper.from_array(np.arange(32, dtype=np.int64), "ints")]
    nodes = [helper.make_node("MatMul", ["x", "big"], ["y1"]),
             helper.make_node("Mul", ["y1", "grid"], ["y2"]),
             helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
                 rng.standard_normal((8, 8)).astype(np.float32), "c_value")),
             helper.make_node("MatMul", ["y2", "c"], ["y3"])]
    body_w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "body_w")
    then = helper.make_graph([helper.make_node("MatMul", ["y3", "body_w"], ["out"])], "then", [],
                             [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8])], [body_w])
    other = helper.make_graph([helper.make_node("Identity", ["y3"], ["out2"])], "else", [],
                              [helper.make_tensor_value_info("out2", TensorProto.FLOAT, [1, 8])])
    nodes.append(helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tensors(model):
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "value":
                out[attr.t.name] = numpy_helper.to_array(attr.t)
            if attr.name == "then_branch":
                out.update({t.name: numpy_helper.to_array(t) for t in attr.g.initializer})
    return out


def test_perturbation_moves_every_weight_by_one_ulp_and_nothing_else():
    model = _model_with_every_kind_of_tensor()
    before, after = _tensors(model), _tensors(perturb_weights(model))
    assert after.keys() == before.keys()
    for name in ("big", "c_value", "body_w"):  # initializers, Constant values, subgraphs
        x, y = before[name], after[name]
        moved = x != 0
        up, down = np.nextafter(x, np.inf), np.nextafter(x, -np.inf)
        assert ((y == up) | (y == down))[moved].all(), name
        assert (y[~moved] == 0).all() and (y != x)[moved].all(), name
    both = np.concatenate([(after[n] > before[n]).ravel() for n in ("big", "c_value", "body_w")])
    assert 0.2 < both.mean() < 0.8  # signs drawn both ways
    np.testing.assert_array_equal(after["grid"], before["grid"])
    np.testing.assert_array_equal(after["ints"], before["ints"])
    # seeded: the same copy each time, and the input model is left alone
    assert perturb_weights(model).SerializeToString() == perturb_weights(model).SerializeToString()
    np.testing.assert_array_equal(_tensors(model)["big"], before["big"])
    onnx.checker.check_model(perturb_weights(model))


def _agreement(score, box, lost=0):
    return Agreement(10, 50, 50 - lost, lost, 0, score, box, score / 10, box / 10, "x")


def test_tolerance_is_the_factor_times_the_larger_noise_and_never_below_the_floor():
    t = ParityTolerance()
    assert t.wants_noise and t.score_atol == FLOAT_ATOL
    c = t.calibrated({"one-ulp weights": _agreement(9e-5, 5e-6), "basic": _agreement(2e-4, 1e-6, lost=1)})
    assert c.score_atol == pytest.approx(4 * 2e-4) and c.box_atol == FLOAT_ATOL and c.max_unmatched == 4
    assert set(c.noise) == {"one-ulp weights", "basic"} and not c.wants_noise
    quiet = t.calibrated({"one-ulp weights": _agreement(3e-6, 2e-7)})
    assert quiet.score_atol == quiet.box_atol == FLOAT_ATOL and quiet.max_unmatched == 0
    # atols given by the user, a factor of 0 and integer sources keep their fixed tolerance
    assert not ParityTolerance(score_atol=1e-3).wants_noise
    assert not ParityTolerance(noise_factor=0).wants_noise
    with pytest.raises(DetzooError, match="--parity-noise-factor must be >= 0"):
        ParityTolerance(noise_factor=-1)


def test_real_conversion_records_the_noise_it_was_checked_against(real_fp32_dir):
    from detzoo.manifest import Manifest

    p = Manifest.load(real_fp32_dir).variants["fp32"].checks["parity"]
    noise = p["tolerance"]["noise"]
    assert set(noise) == {"one-ulp weights", "onnxruntime basic optimizations"}
    for n in noise.values():  # each noise run matched every detection of the artifact
        assert n["images"] == p["images"] and n["matched"] == n["reference"] > 50
        assert n["max_score_diff"] < 1e-4
    largest = max(n["max_score_diff"] for n in noise.values())
    assert p["tolerance"]["score_atol"] == max(FLOAT_ATOL, p["tolerance"]["noise_factor"] * largest)


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["normalization", "first_conv"])
def test_default_tolerance_catches_injected_conversion_bugs(real_fp32_dir, tmp_path, bug):
    """Measured on the 40 eval frames (AVX2): the pixel scale 1/128 for 2/255 moves scores by 6.6e-3,
    the first convolution's weights x 1.001 by 2.4e-3; the calibrated tolerance here is 1e-4."""
    from tests.fixtures.onnxbugs import parity_with_bug

    report = parity_with_bug(real_fp32_dir, bug, tmp_path, limit=20)
    assert not report.passed, report.summary()
    assert report.agreement.max_score_diff > 5 * report.tolerance.score_atol, report.summary()


def test_cli_takes_the_noise_factor(real_model_path, tmp_path):
    from tests.clihelp import run_cli

    r = run_cli("convert", real_model_path, "--out", tmp_path / "e", "--parity-noise-factor", "-2")
    assert r.exit_code == 2 and "--parity-noise-factor must be >= 0, got -2" in r.stderr
    assert not (tmp_path / "e").exists()
