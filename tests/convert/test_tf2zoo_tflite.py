"""The TF2 OD API's own TFLite path: the SSD MobileNet v2 of test_tf2zoo.py (same config, seed and
calibration, so the same weights) exported by ``export_tflite_graph_lib_tf2`` (max 20 detections,
fast NMS) and converted by the TFLite converter to a float and a full-integer model
(tests/fixtures/tf2zoo_build_tflite.py). Both end in a real ``TFLite_Detection_PostProcess``;
``detzoo convert`` with default settings turns each into an artifact that keeps the zoo contract and
detects as the TFLite interpreter does (the integer one within detzoo's step tolerance).

Skipped where the OD API is not installed. The build (about 2 minutes of CPU on 2 cores: OD API export, two
TFLite conversions) is cached in pytest's cache folder, as the other tf2zoo exports are.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.fixtures import tf2zoo
from tests.fixtures.tf2zoo_cfg_tflite import NAME

pytestmark = tf2zoo.MARKS

SSD = "ssd_mobilenet_v2_128x128_4cls"  # the SavedModel export of the same weights
FILES = {"float": "model_float.tflite", "int8": "model_int8.tflite"}
KINDS = pytest.mark.parametrize("kind", list(FILES))


@pytest.fixture(scope="module")
def tflite_export(request, tmp_path_factory):
    return tf2zoo.cached_export(NAME, request, tmp_path_factory)


@pytest.fixture(scope="module")
def entries(tflite_export, tmp_path_factory):
    """kind -> (entry folder, CheckFailed message or None, convert seconds), converted on first use."""
    done = {}

    def get(kind):
        if kind not in done:
            t = time.perf_counter()
            out, failed = tf2zoo.convert_with_defaults(tflite_export / FILES[kind],
                                                       tmp_path_factory.mktemp(f"tflite_{kind}") / "entry")
            done[kind] = (out, failed, time.perf_counter() - t)
        return done[kind]

    return get


@KINDS
def test_export_holds_the_od_api_tflite_graph(tflite_export, kind):
    """One TFLite_Detection_PostProcess with the exporter's attributes after the MobileNet v2 body;
    the integer model quantizes everything before the op, its uint8 input covering [-1, 1]."""
    from collections import Counter

    from detzoo.convert.tflite_postprocess import read_attrs
    from detzoo.source import tflite_interpreter, tflite_precision

    path = tflite_export / FILES[kind]
    interp = tflite_interpreter(path)
    ops = Counter(op["op_name"] for op in interp._get_ops_details())
    assert ops["TFLite_Detection_PostProcess"] == 1 and ops["CONV_2D"] == 55 and ops["DEPTHWISE_CONV_2D"] == 17, ops
    (attrs, shapes), = read_attrs(path.read_bytes(), path.name)
    assert (attrs.num_classes, attrs.max_detections, attrs.use_regular_nms) == (4, 20, False)
    assert shapes[1][-1] == 5  # class predictions keep the background column
    inp, = interp.get_input_details()
    assert list(inp["shape"]) == [1, 128, 128, 3]
    if kind == "float":
        assert tflite_precision(interp) == "fp32" and inp["dtype"] == np.float32
        assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    else:
        assert tflite_precision(interp) == "int8" and inp["dtype"] == np.uint8
        scale, zero = inp["quantization"]
        assert scale == pytest.approx(2 / 255, rel=1e-5) and zero in (127, 128)
        assert ops["QUANTIZE"] == 1 and ops["DEQUANTIZE"] == 2  # the op takes float encodings and scores
    info = tf2zoo.build_info(tflite_export)["tflite"]
    assert info["representative_range"] == [-1.0, 1.0]


@KINDS
def test_converts_keeping_the_contract(entries, kind):
    """The artifact takes uint8 images of any size and batch and gives the four outputs in order;
    the manifest records the source's own IO: 128x128 fed, [-1, 1] floats or raw uint8, ids + 1."""
    import onnx

    from detzoo.manifest import Manifest
    from detzoo.source import OUTPUT_ROLES

    out, _, _ = entries(kind)
    m = Manifest.load(out)
    base = "fp32" if kind == "float" else "int8"
    assert m.source["format"] == "tflite" and sorted(m.variants) == [base]
    src = m.source_spec()
    assert src.class_offset == 1 and src.resize == [128, 128] and src.input.shape == [1, 128, 128, 3]
    if kind == "float":
        assert src.input.dtype == "float32" and (src.scale, src.offset) == pytest.approx((1 / 127.5, -1.0))
    else:
        assert src.input.dtype == "uint8" and (src.scale, src.offset) == (1.0, 0.0)
    model = onnx.load(out / m.variants[base].file)
    assert [i.name for i in model.graph.input] == ["image_tensor:0"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == list(OUTPUT_ROLES)
    assert m.io.resize is None and m.io.class_offset == 0  # the graph resizes and adds 1 itself
    assert m.variants[base].settings["source_precision"] == base


@KINDS
def test_parity_passes_at_the_default_tolerance(entries, kind):
    from detzoo.manifest import Manifest

    out, failed, _ = entries(kind)
    assert failed is None, failed
    v = Manifest.load(out).variants["fp32" if kind == "float" else "int8"]
    p = v.checks["parity"]
    assert p["images"] == 40 and p["reference"] >= 300, p  # a handful of detections per frame
    assert p["matched"] == p["reference"] and p["unmatched_reference"] == p["unmatched_candidate"] == 0, p
    if kind == "float":
        assert p["tolerance"]["steps"] is None and p["max_box_diff"] < 1e-4, p
    else:  # detzoo's step tolerance: 2 steps of the source's own output quantization
        assert p["tolerance"]["steps"] == 2 and p["tolerance"]["score_step"] == pytest.approx(1 / 256), p
        assert p["score_diff_steps"] <= 2 and p["box_diff_steps"] <= 2, p


@KINDS
def test_artifact_gives_the_config_class_ids(entries, kind):
    """TFLite post-processing counts classes from 0; the artifact gives the config's ids 1..4."""
    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.manifest import Manifest
    from detzoo.runners import OrtRunner

    out, _, _ = entries(kind)
    m = Manifest.load(out)
    v = m.variants["fp32" if kind == "float" else "int8"]
    with OrtRunner(out / v.file, m.variant_io(v.name)) as r:
        dets = [r.detect(decode_image(f)) for f in list_images(demo_dir("eval"))[:4]]
    classes = np.concatenate([d.classes for d in dets])
    assert len(classes) and set(classes.tolist()) <= {1, 2, 3, 4} and 1 in classes.tolist()


def _od_api_input(image):
    """The OD API's own preprocessing for this config: fixed_shape_resizer is
    ``tf.compat.v1.image.resize_images`` (bilinear, half_pixel_centers False), then [-1, 1]."""
    import tensorflow as tf

    x = tf.compat.v1.image.resize_images(tf.cast(image[None], tf.float32), [128, 128]).numpy()
    return (x / 127.5 - 1.0).astype(np.float32)


def test_float_tflite_computes_the_saved_models_network(tflite_export, request, tmp_path_factory):
    """Same weights, same network: fed the OD API's own preprocessing, the float TFLite's inputs to
    TFLite_Detection_PostProcess (sigmoid scores, box encodings decoded on its anchors) equal the
    SavedModel's raw_detection_scores and raw_detection_boxes to float noise."""
    import tensorflow as tf

    from detzoo.convert.tflite_postprocess import read_attrs
    from detzoo.images import decode_image, demo_dir, list_images

    saved = tf2zoo.cached_export(SSD, request, tmp_path_factory)
    assert tf2zoo.build_info(saved)["weights_abs_sum"] == tf2zoo.build_info(tflite_export)["weights_abs_sum"]
    path = tflite_export / FILES["float"]
    (attrs, _), = read_attrs(path.read_bytes(), path.name)
    interp = tf.lite.Interpreter(model_content=path.read_bytes(), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    pp, = [op for op in interp._get_ops_details() if op["op_name"] == "TFLite_Detection_PostProcess"]
    serve = tf.saved_model.load(str(saved / "saved_model")).signatures["serving_default"]
    score_diff = box_diff = 0.0
    for f in list_images(demo_dir("eval"))[:4]:
        img = decode_image(f)
        interp.set_tensor(interp.get_input_details()[0]["index"], _od_api_input(img))
        interp.invoke()
        enc, scores, anchors = (interp.get_tensor(i) for i in pp["inputs"])
        ref = serve(input_tensor=tf.constant(img[None]))
        ya, xa, ha, wa = anchors.T
        ty, tx, th, tw = (enc[0] / np.array([attrs.y_scale, attrs.x_scale, attrs.h_scale, attrs.w_scale])).T
        yc, xc, h, w = ty * ha + ya, tx * wa + xa, np.exp(th) * ha, np.exp(tw) * wa
        boxes = np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
        score_diff = max(score_diff, float(np.abs(scores - ref["raw_detection_scores"].numpy()).max()))
        box_diff = max(box_diff, float(np.abs(boxes - ref["raw_detection_boxes"].numpy()[0]).max()))
    print(f"float TFLite vs SavedModel, raw: max score diff {score_diff:.2e}, box diff {box_diff:.2e}")
    assert score_diff < 1e-3 and box_diff < 1e-4, (score_diff, box_diff)


def test_float_tflite_detects_like_the_saved_model(tflite_export, request, tmp_path_factory):
    """The same weights through the OD API's two exports, each fed as detzoo feeds it: the SavedModel
    (uint8 in, resizing inside, multi-class NMS) and the float TFLite (fast class-agnostic NMS in
    TFLite_Detection_PostProcess). Detections that only one NMS keeps stay a small share; matched
    ones differ by float noise on average. Fed with half-pixel centres (detzoo's TFLite resize until
    2026-12-03) instead of TF1's resize_images, which the OD API's fixed_shape_resizer calls, only
    144/597 matched (mean score diff 0.27); with it 549/597 (mean 9.6e-4)."""
    from detzoo.convert.iodetect import detect_io
    from detzoo.convert.loading import load_model_graph
    from detzoo.convert.parity import ParityTolerance, compare_runners
    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.runners import source_runner
    from detzoo.source import open_source

    saved = tf2zoo.cached_export(SSD, request, tmp_path_factory)
    images = [(f.name, decode_image(f)) for f in list_images(demo_dir("eval"))]
    with open_source(saved) as a, open_source(tflite_export / FILES["float"]) as b:
        ios = [detect_io(s, graph=load_model_graph(s)) for s in (a, b)]
        with source_runner(a.format, a.path, ios[0]) as ra, source_runner(b.format, b.path, ios[1]) as rb:
            ag = compare_runners(ra, rb, images, ParityTolerance(score_atol=1e-4, box_atol=1e-4)).agreement
    print("float TFLite vs SavedModel, detections:", ag.to_json())
    assert ag.reference >= 300 and ag.matched_share >= 0.85, ag
    assert ag.mean_score_diff < 1e-2 and ag.mean_box_diff < 5e-3, ag
