"""A detector built and exported by the real TF2 Object Detection API (SSD MobileNet v2 in the shape
of ssd_mobilenet_v2_320x320_coco17_tpu-8, 128x128, 4 classes; tests/fixtures/tf2zoo.py) converts
to an artifact that keeps the zoo contract, and its detections match the SavedModel's.

Skipped where the OD API is not installed (scripts/install --test installs it). The export is
built once in a subprocess (about 2 minutes on 2 cores) and cached in pytest's cache folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import tf2zoo

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(tf2zoo.od_api_missing() is not None,
                                 reason=f"TF2 Object Detection API: {tf2zoo.od_api_missing()}")]

NAME = "ssd_mobilenet_v2_128x128_4cls"
ROLES = ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]
TF2_OUTPUTS = {"detection_anchor_indices", "detection_boxes", "detection_classes", "detection_multiclass_scores",
               "detection_scores", "num_detections", "raw_detection_boxes", "raw_detection_scores"}


@pytest.fixture(scope="module")
def ssd_export(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("detzoo-tf2zoo")) if cache is not None else tmp_path_factory.mktemp("tf2zoo-build")
    return tf2zoo.export(NAME, root)


@pytest.fixture(scope="module")
def ssd_entry(ssd_export, tmp_path_factory):
    """(entry folder, CheckFailed message or None): converted once with the default parity check
    (the demo eval frames, the default tolerance); the entry is written even when parity fails."""
    from detzoo.convert import ConvertConfig, convert
    from detzoo.errors import CheckFailed

    out = tmp_path_factory.mktemp("tf2zoo") / "entry"
    try:
        convert(ConvertConfig(source=ssd_export, out=out))
    except CheckFailed as e:
        return out, str(e)
    return out, None


def test_export_is_laid_out_and_signed_as_the_zoo_ships(ssd_export):
    from tensorflow.python.framework import dtypes

    from detzoo.source import load_saved_model_signature

    assert {p.name for p in ssd_export.iterdir()} >= {"saved_model", "checkpoint", "pipeline.config"}
    assert "fixed_shape_resizer" in (ssd_export / "pipeline.config").read_text()
    _, sig = load_saved_model_signature(ssd_export / "saved_model")
    assert list(sig.inputs) == ["input_tensor"] and set(sig.outputs) == TF2_OUTPUTS
    info = sig.inputs["input_tensor"]
    assert dtypes.as_dtype(info.dtype).name == "uint8"
    assert [d.size for d in info.tensor_shape.dim] == [1, -1, -1, 3]
    # A trained detector's look on the calibration frames: a few confident anchors, most low.
    calib = tf2zoo.build_info(ssd_export)["score_calibration"]
    assert 0 < np.mean(calib["scores_above_0.5_per_image"]) < 20


def test_converts_keeping_the_contract(ssd_entry):
    import onnx

    from detzoo.manifest import Manifest

    out, _ = ssd_entry
    m = Manifest.load(out)
    assert m.name == NAME and m.source["format"] == "saved_model" and m.source_spec().class_offset == 0
    model = onnx.load(out / m.variants["fp32"].file)
    assert [i.name for i in model.graph.input] == ["input_tensor"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ROLES
    assert m.io.resize is None  # the graph resizes to 128x128 itself


def test_artifact_detects_like_the_saved_model(ssd_entry):
    """Every source detection >= 0.3 has its artifact counterpart (same class, IoU >= 0.5) and vice
    versa, class ids are the config's 1..4, and boxes agree to 1e-4 of the image size."""
    from detzoo.manifest import Manifest

    out, _ = ssd_entry
    p = Manifest.load(out).variants["fp32"].checks["parity"]
    assert p["images"] == 40 and p["reference"] >= 100, p  # a few detections per frame
    assert p["matched"] == p["reference"] and p["unmatched_reference"] == p["unmatched_candidate"] == 0, p
    assert p["max_box_diff"] < 1e-4, p

    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.runners import OrtRunner

    m = Manifest.load(out)
    with OrtRunner(out / m.variants["fp32"].file, m.io) as r:
        dets = [r.detect(decode_image(f)) for f in list_images(demo_dir("eval"))[:4]]
    classes = np.concatenate([d.classes for d in dets])
    assert len(classes) and set(classes.tolist()) <= {1, 2, 3, 4}


@pytest.mark.xfail(strict=True, reason=(
    "issue 15: max score diff 2.1e-4 > 1e-4 (boxes 2.6e-6, all 597 detections >= 0.3 matched): float noise "
    "of this network, not a conversion bug. onnxruntime at optimization level all vs extended differs by "
    "2.1e-4 from itself; at extended it is 7.3e-5 from TF; TF with every weight moved by 1 ulp moves by "
    "2.1-5.0e-4 (BENCHMARKS.md)"))
def test_parity_passes_at_the_default_tolerance(ssd_entry):
    out, failed = ssd_entry
    assert failed is None, failed
