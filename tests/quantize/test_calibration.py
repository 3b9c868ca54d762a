"""Calibration images, the feed check, chunked calibration and the typed settings."""

import json
import shutil

import numpy as np
import onnx
import pytest

from detzoo.errors import DetzooError
from detzoo.images import demo_dir, list_images
from detzoo.quantize import calibration
from detzoo.quantize.calibration import (CalibMethod, CalibrationConfig, ImageReader, check_feedable,
                                         pick_calibration_images)
from detzoo.quantize.int8 import Int8Settings, IntType
from detzoo.quantize.plan import run as make_plan
from detzoo.runners import preprocess
from detzoo.source import IOSpec, TensorSpec
from tests.quantize.graphs import tiny_detector

ROLES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def _io(dtype="uint8", resize=(16, 16)):
    return IOSpec(input=TensorSpec("image", dtype, [1, 16, 16, 3]), outputs={r: r for r in ROLES},
                  resize=list(resize) if resize else None)


@pytest.fixture
def calib_dir(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    for p in list_images(demo_dir("calib"))[:5]:
        shutil.copy(p, d / p.name)
    return d


def test_picks_the_first_usable_images_and_skips_broken_ones(calib_dir):
    (calib_dir / "aaa_broken.jpg").write_bytes(b"not a jpeg")
    picked = pick_calibration_images(calib_dir, 3)
    assert len(picked.files) == 3 and "aaa_broken.jpg" not in picked.ids
    assert len(picked.skipped) == 1 and "aaa_broken.jpg" in picked.skipped[0]
    js = picked.to_json()
    assert js["ids"] == picked.ids and len(js["sha256"]) == 64


def test_fewer_usable_images_than_asked(calib_dir):
    (calib_dir / "zzz_broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DetzooError, match="5 usable images, fewer than --calib-count 6"):
        pick_calibration_images(calib_dir, 6)


def test_empty_folder_and_zero_count(tmp_path, calib_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DetzooError, match="holds no images"):
        pick_calibration_images(tmp_path / "empty", None)
    with pytest.raises(DetzooError, match="--calib-count must be >= 1"):
        pick_calibration_images(calib_dir, 0)


def test_overlap_with_check_images_is_found_by_content(calib_dir, tmp_path):
    check = tmp_path / "check"
    check.mkdir()
    first = sorted(calib_dir.iterdir())[0]
    shutil.copy(first, check / "renamed.jpg")
    picked = pick_calibration_images(calib_dir, None, list_images(check))
    assert picked.overlap == [first.name]


def test_reader_feeds_exactly_what_evaluation_feeds(calib_dir):
    from detzoo.images import decode_image

    io = _io()
    files = list_images(calib_dir)
    feeds = list(ImageReader(files, io, "image", start=1, limit=2))
    assert len(feeds) == 2
    np.testing.assert_array_equal(feeds[0]["image"], preprocess(decode_image(files[1]), io))


def test_input_the_images_cannot_feed_says_why():
    model = tiny_detector()
    img = np.zeros((20, 30, 3), np.uint8)
    check_feedable(model, _io(), img)  # resized to 16x16 uint8: fine
    with pytest.raises(DetzooError, match=r"takes uint8 \[1, 16, 16, 3\].*gives float32"):
        check_feedable(model, _io(dtype="float32"), img)
    with pytest.raises(DetzooError, match=r"takes \[1, 16, 16, 3\].*gives uint8 \[1, 20, 30, 3\]"):
        check_feedable(model, _io(resize=None), img)


@pytest.mark.parametrize("method", list(CalibMethod))
def test_chunked_calibration_runs_every_method(tmp_path, calib_dir, method):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_detector(), path)
    picked = pick_calibration_images(calib_dir, 5)
    settings = Int8Settings(calib_method=method)
    cache = calibration.run(path, picked, _io(), ["Conv", "Clip"], tmp_path / f"{method.value}.json",
                            CalibrationConfig(method, settings.calibrator_options(), chunk=2))
    assert "c1" in cache.read_text() or "r1" in cache.read_text()


def test_minmax_ranges_do_not_depend_on_the_chunk_size(tmp_path, calib_dir):
    path = tmp_path / "m.onnx"
    onnx.save(tiny_detector(), path)
    picked = pick_calibration_images(calib_dir, 5)
    opts = Int8Settings().calibrator_options()
    a = calibration.run(path, picked, _io(), ["Conv", "Clip"], tmp_path / "a.json",
                        CalibrationConfig(CalibMethod.MINMAX, opts, chunk=2))
    b = calibration.run(path, picked, _io(), ["Conv", "Clip"], tmp_path / "b.json",
                        CalibrationConfig(CalibMethod.MINMAX, opts, chunk=50))
    assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_int8_settings_are_typed_and_validated():
    s = Int8Settings(calib_method="entropy", activations="uint8", weights="int8")
    assert s.calib_method is CalibMethod.ENTROPY and s.activations is IntType.UINT8
    assert s.extra_options() == {"ActivationSymmetric": False, "WeightSymmetric": True,
                                 "QDQKeepRemovableActivations": False}
    assert Int8Settings(activations="int8").extra_options()["ActivationSymmetric"] is True
    assert Int8Settings(calib_method="percentile", percentile=99.9).calibrator_options()["percentile"] == 99.9
    assert s.to_json()["activations"] == "uint8 asymmetric"
    for bad, match in (({"calib_method": "kl"}, "calib-method must be one of"),
                       ({"percentile": 20}, "percentile must be in"),
                       ({"activations": "int8", "weights": "uint8"}, "no onnxruntime kernel"),
                       ({"histogram_bins": 4}, "bins must be >= 16")):
        with pytest.raises(DetzooError, match=match):
            Int8Settings(**bad)


def test_plan_op_types_are_what_calibration_needs():
    from detzoo.quantize.int8 import int8_op_types

    assert int8_op_types(make_plan(tiny_detector())) == ["Clip", "Conv"]


def test_stem_convolution_stays_float_for_int8():
    from detzoo.quantize.int8 import stem_exclusions

    model = tiny_detector()
    out = stem_exclusions(model, make_plan(model))
    assert set(out) == {"conv1", "relu6_1"} and "3 input channels" in out["conv1"]


def test_sensitivity_ranks_every_quantized_conv(tmp_path, calib_dir):
    from detzoo.quantize import int8
    from detzoo.quantize.int8 import int8_op_types
    from detzoo.quantize.search import rank_sensitivity

    path = tmp_path / "m.onnx"
    model = tiny_detector()
    onnx.save(model, path)
    plan = make_plan(model)
    settings = Int8Settings()
    picked = pick_calibration_images(calib_dir, 3)
    cache = calibration.run(path, picked, _io(), int8_op_types(plan), tmp_path / "c.json", settings.calibration())
    quantized = int8.run(path, plan, settings, cache, tmp_path / "q.onnx")
    ranked = rank_sensitivity(path, plan, quantized, cache, settings, picked.files[:2], _io())
    assert {n for n, _ in ranked} == {"conv1", "conv2", "box_head", "score_head"}
    scores = [e for _, e in ranked]
    assert scores == sorted(scores, reverse=True) and all(e >= 0 for e in scores) and scores[0] > 0


def test_without_a_count_at_most_the_limit_is_taken(calib_dir):
    assert len(pick_calibration_images(calib_dir, None, at_most=3).files) == 3
    assert len(pick_calibration_images(calib_dir, None).files) == 5


def test_ranges_without_a_finite_value_are_named_and_never_snapped_into_nan(tmp_path):
    """A tensor empty on every calibration image has range (+inf, -inf); snapping made it NaN and
    onnxruntime's quantizer stopped on "scale issue" (the real FPNLite SSD). Finite ranges still snap."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    def td(lo, hi):
        return TensorData(lowest=np.array([lo], np.float32), highest=np.array([hi], np.float32))

    data = TensorsData(CalibrationMethod.MinMax, {"ok": td(-1.3, 2.7), "empty": td(np.inf, -np.inf),
                                                   "inf": td(-np.inf, 3.0)})
    calibration.snap_ranges(data)
    save_tensors_data(data, tmp_path / "c.json")
    assert calibration.nonfinite(tmp_path / "c.json") == ["empty", "inf"]
    assert data.data["ok"].range_value[0][0] < -1.3 and data.data["ok"].range_value[1][0] > 2.7
    assert not np.isnan(data.data["empty"].range_value).any()
