"""Every source family converts, keeps the zoo contract and passes the parity check."""

import numpy as np
import onnx
import pytest

from detzoo.convert import ConvertConfig, convert
from detzoo.images import decode_image, list_images
from detzoo.manifest import Manifest
from detzoo.onnxgraph import walk_nodes
from detzoo.runners import OrtRunner, source_runner
from detzoo.source import open_source

ROLES = ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]


def _convert(source, out, images):
    return convert(ConvertConfig(source=source, out=out, check_images=images))


@pytest.mark.parametrize("fixture,fmt,input_name,outputs,offset", [
    ("shapes_saved_model", "saved_model", "input_tensor", ROLES, 0),
    ("shapes_export_folder", "saved_model", "input_tensor", ROLES, 0),
    ("shapes_tflite", "tflite", "image_tensor:0", ROLES, 1),
    ("two_stage_graph", "frozen_graph", "image_tensor:0", [r + ":0" for r in ROLES], 0),
    ("zoo_tarball", "frozen_graph", "image_tensor:0", [r + ":0" for r in ROLES], 0),
])
def test_family_converts_with_contract_and_parity(request, tmp_path, shapes, fixture, fmt, input_name, outputs,
                                                  offset):
    images, _ = shapes
    res = _convert(request.getfixturevalue(fixture), tmp_path / "e", images)
    m = res.manifest
    # The artifact takes dataset ids in the graph; the source's own offset is recorded beside it.
    assert m.source["format"] == fmt and m.source_spec().class_offset == offset and m.io.class_offset == 0
    model = onnx.load(res.artifact)
    assert [i.name for i in model.graph.input] == [input_name]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_value") for d in dims] == [False, False, False, True] and dims[3].dim_value == 3
    assert m.io.input.shape[:3] == [None, None, None] and m.io.resize is None
    assert [o.name for o in model.graph.output] == outputs
    p = m.variants["fp32"].checks["parity"]
    assert p["passed"] and p["images"] == 24 and p["reference"] >= 20, p
    assert p["max_score_diff"] < 1e-4 and p["max_box_diff"] < 1e-4


def test_tflite_fixed_input_is_resized_inside_the_artifact(shapes_tflite, tmp_path, shapes):
    res = _convert(shapes_tflite, tmp_path / "e", shapes[0])
    assert res.manifest.source_spec().resize == [96, 128]
    assert "resize to 96x128 (TF1 bilinear, no half-pixel centres)" in res.manifest.source_spec().preprocessing
    assert res.manifest.io.resize is None and "none" in res.manifest.io.preprocessing


def test_keep_source_io_keeps_the_tflite_contract(shapes_tflite, tmp_path, shapes):
    res = convert(ConvertConfig(source=shapes_tflite, out=tmp_path / "e", check_images=shapes[0], keep_source_io=True))
    m = res.manifest
    assert m.source_io is None and m.io.resize == [96, 128] and m.io.class_offset == 1
    model = onnx.load(res.artifact)
    assert model.graph.input[0].name == "serving_default_input:0"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 96, 128, 3]
    assert m.variants["fp32"].checks["parity"]["passed"] and m.variants["fp32"].settings["contract"] is False


def test_tflite_and_saved_model_twins_give_the_same_dataset_ids(shapes_tflite, shapes_saved_model, tmp_path, shapes):
    """The 0-based TFLite model's detections, converted once in the runner, equal its 1-based twin's."""
    images, _ = shapes
    a = _convert(shapes_tflite, tmp_path / "t", images)
    b = _convert(shapes_saved_model, tmp_path / "s", images)
    img = decode_image(list_images(images)[3])
    with OrtRunner(a.artifact, a.manifest.io) as ra, OrtRunner(b.artifact, b.manifest.io) as rb:
        da, db = ra.detect(img), rb.detect(img)
    assert len(da) == len(db) > 0 and set(db.classes.tolist()) <= {1, 3}
    np.testing.assert_array_equal(da.classes, db.classes)
    np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-3)


def test_saved_model_source_runner_matches_artifact(shapes_saved_model, tmp_path, shapes):
    images, _ = shapes
    res = _convert(shapes_saved_model, tmp_path / "e", images)
    img = decode_image(list_images(images)[0])
    with open_source(shapes_saved_model) as src:
        with source_runner(src.format, src.path, res.manifest.source_spec()) as s, \
                OrtRunner(res.artifact, res.manifest.io) as o:
            ds, do = s.detect(img), o.detect(img)
    np.testing.assert_array_equal(ds.classes, do.classes)
    np.testing.assert_allclose(ds.scores, do.scores, atol=1e-6)


def test_two_stage_graph_structure_survives_conversion(two_stage_graph, tmp_path, shapes):
    from detzoo.convert.inspect import inspect_model

    r = inspect_model(two_stage_graph)
    assert "CropAndResize" in r["op_census"] and r["control_flow"].get("LoopCond", 0) >= 2
    assert r["nms_ops"].get("NonMaxSuppressionV3", 0) >= 2
    res = _convert(two_stage_graph, tmp_path / "e", shapes[0])
    model = onnx.load(res.artifact)
    everywhere = {n.op_type for n in walk_nodes(model.graph)}
    assert "Loop" in {n.op_type for n in model.graph.node}
    assert {"NonMaxSuppression", "Resize"} <= everywhere  # NMS and CropAndResize (as a Loop of Resize)


def test_force_replaces_entry_and_removes_stale_variants(shapes_saved_model, tmp_path, shapes):
    out = tmp_path / "e"
    _convert(shapes_saved_model, out, shapes[0])
    m = Manifest.load(out)
    (out / "stale.int8.onnx").write_bytes(b"old")
    from detzoo.manifest import Variant
    m.variants["int8"] = Variant(name="int8", file="stale.int8.onnx", precision="int8", sha256="0" * 64, size=3)
    m.save(out)
    (out / "report.json").write_text("{}")
    convert(ConvertConfig(source=shapes_saved_model, out=out, check=False, force=True))
    assert not (out / "stale.int8.onnx").exists() and not (out / "report.json").exists()
    assert list(Manifest.load(out).variants) == ["fp32"]
