"""Artifacts drop into the zoo's runners unchanged: any batch, fixed sizes, and the numbers they print.

The zoo runner (tests/zoo_runner.py) knows nothing of detzoo: it feeds OpenCV-resized uint8
batches and reads outputs by position. Every artifact of an entry must run there at -b 1 and
-b 4, and ``verify --feed-size`` must report what it prints.
"""

import shutil

import numpy as np
import onnx
import pytest

from detzoo.coco.evaluation import STAT_NAMES
from detzoo.convert import ConvertConfig, convert
from detzoo.errors import DetzooError
from detzoo.manifest import Manifest
from detzoo.verify import VerifyConfig, verify
from tests.clihelp import assert_user_error, run_cli, snapshot
from tests.zoo_runner import zoo_map

FEED = (640, 640)


@pytest.fixture(scope="session")
def zoo_entry(tmp_path_factory, shapes, shapes_saved_model):
    """The tiny TF2 SavedModel (batch fixed to one in its signature) with a 640x640 twin, fp16 and int8."""
    from detzoo.quantize import QuantizeConfig, quantize

    out = tmp_path_factory.mktemp("zoo") / "entry"
    convert(ConvertConfig(source=shapes_saved_model, out=out, check_images=shapes[0], input_sizes=["640x640"]))
    quantize(QuantizeConfig(folder=out, calib_images=shapes[0], check_images=shapes[0]))
    return out


@pytest.fixture
def zoo_copy(zoo_entry, tmp_path):
    dst = tmp_path / "entry"
    shutil.copytree(zoo_entry, dst)
    return dst


def test_every_variant_exists_with_the_true_input_shape(zoo_entry):
    m = Manifest.load(zoo_entry)
    assert set(m.variants) == {"fp32", "fp16", "int8", "fp32-640x640", "fp16-640x640", "int8-640x640"}
    for name, v in m.variants.items():
        dims = onnx.load(zoo_entry / v.file).graph.input[0].type.tensor_type.shape.dim
        got = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        want = [None, 640, 640, 3] if name.endswith("640x640") else [None, None, None, 3]
        assert got == want, (name, got)
        assert m.variant_io(name).input.shape == want
    for name in ("fp16", "int8"):  # the batch-1 build got any batch back, checked row by row
        b = m.variants[name].checks["batch"]
        assert b["checked"] and b["batch"] == 2 and b["max_score_diff"] <= 1e-4 and b["matched"] > 0
    fixed = m.variants["fp32-640x640"].checks["parity"]
    assert fixed["passed"] and "640x640" in fixed["fed"]


def test_zoo_runner_prints_what_verify_feed_size_reports_for_every_artifact(zoo_copy, shapes, shifted_annotations):
    images = shapes[0]
    report = verify(VerifyConfig(folder=zoo_copy, images=images, annotations=shifted_annotations,
                                 latency_runs=0, feed_size=FEED, max_drop=100)).report.to_json()
    assert "640x640" in report["data"]["feed"] and report["data"]["feed_size"] == [640, 640]
    m = Manifest.load(zoo_copy)
    assert set(report["models"]) == {"source", *m.variants}
    for name, v in m.variants.items():
        ours = np.array([report["models"][name]["coco"]["stats"][s] for s in STAT_NAMES])
        assert ours[0] > 0.2, name  # a real mAP, not an empty match
        for batch in (1, 4):
            theirs = zoo_map(zoo_copy / v.file, images, shifted_annotations, batch=batch, size=FEED)
            np.testing.assert_allclose(theirs, ours, atol=0.0015, err_msg=f"{name} at -b {batch}")


def test_tflite_made_artifact_runs_in_the_zoo_runner_with_coco_ids(tmp_path, shapes, shapes_tflite,
                                                                    shifted_annotations):
    """A .tflite source keeps its fixed 96x128 float-free IO and 0-based classes nowhere in the artifact."""
    images = shapes[0]
    out = tmp_path / "lite"
    convert(ConvertConfig(source=shapes_tflite, out=out, check_images=images))
    m = Manifest.load(out)
    assert m.io.input.name == "image_tensor:0" and m.source_spec().class_offset == 1
    report = verify(VerifyConfig(folder=out, images=images, annotations=shifted_annotations, latency_runs=0,
                                 feed_size=FEED, max_drop=100)).report.to_json()
    ours = np.array([report["models"]["fp32"]["coco"]["stats"][s] for s in STAT_NAMES])
    src = np.array([report["models"]["source"]["coco"]["stats"][s] for s in STAT_NAMES])
    np.testing.assert_allclose(ours, src, atol=1e-3)  # the in-graph resize and offset are the source's
    for batch in (1, 4):
        theirs = zoo_map(out / m.variants["fp32"].file, images, shifted_annotations, batch=batch, size=FEED)
        np.testing.assert_allclose(theirs, ours, atol=0.0015)


def test_verify_batch_measures_latency_and_throughput_at_batch_n(zoo_copy, shapes):
    r = verify(VerifyConfig(folder=zoo_copy, images=shapes[0], latency_runs=3, latency_images=4, batch=4,
                            variants=["fp32", "int8"], max_drop=100)).report.to_json()
    assert r["latency"]["batch"] == 4
    for name in ("fp32", "int8"):
        lat = r["models"][name]["latency"]
        assert lat["batch"] == 4 and lat["throughput_ips"] == pytest.approx(4000 / lat["mean_ms"], rel=1e-3)
    # the SavedModel's signature takes one image per call: said, not silently timed at batch 1
    assert r["models"]["source"]["latency"] is None
    assert any("source takes one image per call" in n for n in r["notes"])
    assert "batch 4" in (zoo_copy / "REPORT.md").read_text()


@pytest.mark.parametrize("args,words", [
    (["--batch", "0"], "--batch must be >= 1, got 0"),
    (["--feed-size", "abc"], "--feed-size takes HEIGHTxWIDTH"),
    (["--feed-size", "0x300"], "--feed-size takes sizes between 1 and 8192"),
    (["--feed-size", "300x300"], "variant fp32-640x640 takes only 640x640"),
])
def test_verify_bad_feeding_is_one_line_exit_2_nothing_written(zoo_copy, shapes, args, words):
    before = snapshot(zoo_copy)
    r = run_cli("verify", zoo_copy, "--images", shapes[0], "--latency-runs", "0", *args)
    assert_user_error(r, 2, words)
    assert snapshot(zoo_copy) == before


@pytest.mark.parametrize("size,words", [("0x300", "between 1 and 8192"), ("abc", "takes HEIGHTxWIDTH"),
                                        ("300", "takes HEIGHTxWIDTH")])
def test_convert_bad_input_size_is_one_line_exit_2_nothing_written(tmp_path, shapes_saved_model, size, words):
    out = tmp_path / "e"
    assert_user_error(run_cli("convert", shapes_saved_model, "--out", out, "--input-size", size), 2, words)
    assert not out.exists()


def test_input_size_the_source_cannot_take_is_refused(tmp_path, shapes, shapes_tflite):
    """With --keep-source-io a fixed-size TFLite model takes only its own size."""
    out = tmp_path / "e"
    with pytest.raises(DetzooError, match="takes only 96x128"):
        convert(ConvertConfig(source=shapes_tflite, out=out, check_images=shapes[0], keep_source_io=True,
                              input_sizes=["300x300"]))
    assert not out.exists()


def test_quantize_feed_size_calibrates_on_the_zoo_feeding(shapes):
    """int8 is calibrated on exactly what evaluation feeds: with --feed-size, the OpenCV resize first."""
    from detzoo.images import decode_image, list_images
    from detzoo.quantize.calibration import ImageReader
    from detzoo.quantize.calibration import fed_io
    from detzoo.quantize.core import QuantizeConfig
    from detzoo.runners import resize_like_cv2
    from detzoo.source import IOSpec, TensorSpec

    io = IOSpec(input=TensorSpec("image_tensor:0", "uint8", [None, None, None, 3]),
                outputs={r: r for r in ("num_detections", "detection_boxes", "detection_scores",
                                        "detection_classes")})
    files = list_images(shapes[0])[:2]
    fed = ImageReader(files, fed_io(io, (64, 48)), "image_tensor:0").get_next()["image_tensor:0"]
    np.testing.assert_array_equal(fed[0], resize_like_cv2(decode_image(files[0]), 64, 48))
    plain = ImageReader(files, fed_io(io, None), "image_tensor:0").get_next()["image_tensor:0"]
    assert plain.shape[1:3] == decode_image(files[0]).shape[:2]
    with pytest.raises(DetzooError, match="--feed-size"):
        QuantizeConfig(folder=".", feed_size="0x5")
