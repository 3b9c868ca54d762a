"""``make_ssd_tflite`` makes what it claims: tiny SSD-shaped TFLite detectors ending in
``TFLite_Detection_PostProcess`` in float, float16, int8, uint8 (quantized post-processing
inputs) and uint8-qat (TOCO-style: every activation uint8) precision, deterministic, with a
trained-looking spread of scores."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures import models as fx

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore:.*experimental_preserve_all_tensors")

PP = "TFLite_Detection_PostProcess"
NUM_CLASSES = 4       # make_ssd_tflite's defaults
MAX_DETECTIONS = 10
SCORE_THRESHOLD = 0.1


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(precision, **kwargs) -> path, each distinct model converted once per module."""
    root = tmp_path_factory.mktemp("ssd")
    cache = {}

    def get(precision, **kwargs):
        key = (precision, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = fx.make_ssd_tflite(root / str(len(cache)), precision=precision, **kwargs)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def images():
    """Held-out synthetic images (the default calibration set is seed 0) and two real frames."""
    from detzoo.images import decode_image, demo_dir, list_images

    real = [np.clip(np.round(tf.image.resize(decode_image(p), fx.SSD_INPUT_HW).numpy()), 0, 255).astype(np.uint8)
            for p in list_images(demo_dir("check"))[:2]]
    return fx.ssd_synthetic_images(6, seed=1) + real


def _interp(path):
    interp = tf.lite.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    return interp


def _pp_op(interp):
    ops = [op for op in interp._get_ops_details() if op["op_name"] == PP]
    assert len(ops) == 1
    return ops[0]


def _read(interp, index):
    """A tensor's value, dequantized when it is quantized."""
    detail = next(d for d in interp.get_tensor_details() if d["index"] == index)
    value = interp.get_tensor(index)
    scale, zero_point = detail["quantization"]
    return (value.astype(np.float64) - zero_point) * scale if scale else value.astype(np.float64)


def _run(path, images):
    """Per image: (boxes, classes, scores) of the valid detections, and the op's three inputs."""
    interp = _interp(path)
    inp = interp.get_input_details()[0]["index"]
    pp = _pp_op(interp)
    out = []
    for im in images:
        interp.set_tensor(inp, im[None])
        interp.invoke()
        boxes, classes, scores, num = (interp.get_tensor(i) for i in pp["outputs"])
        n = int(num[0])
        out.append(((boxes[0, :n].copy(), classes[0, :n].copy(), scores[0, :n].copy()),
                    [_read(interp, i) for i in fx.ssd_postprocess_inputs(path)]))
    return out


def _options(path) -> dict:
    from flatbuffers import flexbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    op = fx._ssd_postprocess_op(model.subgraphs[0], model)
    return flexbuffers.Loads(bytes(bytearray(op.customOptions)))


def test_nms_attribute_string_defaults_unchanged_and_every_attribute_settable():
    assert fx.nms_attribute_string() == (
        'name: "TFLite_Detection_PostProcess" attr { key: "max_detections" value { i: 20 } } '
        'attr { key: "max_classes_per_detection" value { i: 1 } } '
        'attr { key: "detections_per_class" value { i: 20 } } attr { key: "use_regular_nms" value { b: true } } '
        'attr { key: "nms_score_threshold" value { f: 0.050000 } } '
        'attr { key: "nms_iou_threshold" value { f: 0.500000 } } attr { key: "y_scale" value { f: 10.000000 } } '
        'attr { key: "x_scale" value { f: 10.000000 } } attr { key: "h_scale" value { f: 5.000000 } } '
        'attr { key: "w_scale" value { f: 5.000000 } } attr { key: "num_classes" value { i: 3 } }')
    s = fx.nms_attribute_string(7, 90, False, 3, max_classes_per_detection=2, nms_score_threshold=1e-8,
                                nms_iou_threshold=0.6, y_scale=8.0, x_scale=9.0, h_scale=4.0, w_scale=3.0)
    for part in ('"max_detections" value { i: 7 }', '"num_classes" value { i: 90 }', '{ b: false }',
                 '"detections_per_class" value { i: 3 }', '"max_classes_per_detection" value { i: 2 }',
                 '"nms_score_threshold" value { f: 1e-08 }', '"nms_iou_threshold" value { f: 0.600000 }',
                 '"y_scale" value { f: 8.000000 }', '"x_scale" value { f: 9.000000 }',
                 '"h_scale" value { f: 4.000000 }', '"w_scale" value { f: 3.000000 }'):
        assert part in s


@pytest.mark.parametrize("precision", fx.SSD_PRECISIONS)
def test_structure(build, precision):
    path = build(precision)
    assert path.name == f"ssd_{precision}_fast.tflite"
    interp = _interp(path)
    (inp,) = interp.get_input_details()
    assert inp["name"] == fx.SSD_INPUT_NAME and inp["dtype"] == np.uint8
    assert inp["shape"].tolist() == [1, *fx.SSD_INPUT_HW, 3]
    ops = [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
    assert [op["op_name"] for op in ops].count(PP) == 1
    pp = _pp_op(interp)
    assert fx.ssd_postprocess_inputs(path) == tuple(pp["inputs"])
    details = {d["index"]: d for d in interp.get_tensor_details()}
    pp_types = [details[i]["dtype"] for i in pp["inputs"]]
    assert pp_types == [np.uint8] * 3 if precision.startswith("uint8") else pp_types == [np.float32] * 3
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], np.uint8))
    interp.invoke()  # float16: the anchors are a DEQUANTIZE (float16 -> float32) output
    np.testing.assert_array_equal(_read(interp, pp["inputs"][2]), fx.ssd_anchors())
    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 9
    conv_types = {details[i]["dtype"] for op in convs for i in op["inputs"][:2]}
    assert conv_types == ({np.int8} if precision in ("int8", "uint8") else
                          {np.uint8} if precision == "uint8-qat" else {np.float32})
    if precision == "float16":
        assert any(d["dtype"] == np.float16 for d in details.values())
    if precision.startswith("uint8"):
        box, cls, anchors = (details[i]["quantization"] for i in pp["inputs"])
        assert cls == (1 / 256, 0) and anchors[0] == 1 / 256 and anchors[1] > 0 and box[0] > 0
    if precision == "uint8-qat":
        _check_all_uint8(ops, details, inp, pp)


def _check_all_uint8(ops, details, inp, pp, extra=()):
    """As in the zoo's TOCO-quantized SSDs: every activation uint8 (asymmetric, per-tensor),
    conv filters uint8 per-tensor, biases int32 at input scale * filter scale, no (DE)QUANTIZE."""
    assert {op["op_name"] for op in ops} == {"CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "CONCATENATION",
                                             "LOGISTIC", PP, *extra}
    mean, std = fx.SSD_QAT_INPUT_STATS
    assert inp["quantization"] == (pytest.approx(1 / std), mean)
    for op in ops:
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x, f, b, y = (details[i] for i in (*op["inputs"], *op["outputs"]))
            for t in (x, f, y):
                assert t["dtype"] == np.uint8 and t["quantization"][0] > 0
                assert t["quantization_parameters"]["scales"].size == 1      # per-tensor
            assert b["dtype"] == np.int32 and b["quantization"][1] == 0
            assert b["quantization"][0] == pytest.approx(x["quantization"][0] * f["quantization"][0], rel=1e-5)
        if op["op_name"] == "LOGISTIC":
            assert details[op["outputs"][0]]["quantization"] == (1 / 256, 0)
            assert op["outputs"][0] == pp["inputs"][1]
        if op["op_name"] != PP:   # the op's outputs are float32, as in the zoo's models
            for i in (*op["inputs"], *op["outputs"]):
                assert details[i]["dtype"] in (np.uint8, np.int32)


@pytest.mark.parametrize("precision", fx.SSD_PRECISIONS)
def test_detections_look_trained(build, images, precision):
    runs = _run(build(precision), images)
    scores = np.concatenate([s for (_, _, s), _ in runs])
    for (boxes, classes, s), (enc, cls, _) in runs:
        assert 0 < len(s) <= MAX_DETECTIONS and np.isfinite(boxes).all()
        assert ((classes >= 0) & (classes < NUM_CLASSES)).all() and (s >= SCORE_THRESHOLD - 1e-6).all()
        assert cls.shape == (1, 240, NUM_CLASSES + 1) and enc.shape == (1, 240, 4)
        assert (cls[..., 1:] > 0.5).mean() < 0.1       # most anchors score low
        assert 0.3 < np.abs(enc).mean() < 2.0           # box encodings of order 1
    assert (scores > 0.5).any() and not (scores > 0.5).all()
    assert sum((s > 0.5).sum() for (_, _, s), _ in runs) >= len(images)


def test_uint8_matches_int8_and_int8_tracks_float(build, images):
    i8, u8, f32 = (_interp(build(p)) for p in ("int8", "uint8", "float"))
    pp_i8, pp_u8 = _pp_op(i8), _pp_op(u8)
    ops_i8 = {o for op in i8._get_ops_details() if op["op_name"] == "DEQUANTIZE" for o in op["outputs"]}
    assert set(pp_i8["inputs"][:2]) <= ops_i8       # int8: float inputs through DEQUANTIZE
    d_i8 = {d["index"]: d for d in i8.get_tensor_details()}
    d_u8 = {d["index"]: d for d in u8.get_tensor_details()}
    producers = {o: op for op in i8._get_ops_details() for o in op["outputs"]}
    for slot in (0, 1):
        src = d_i8[producers[pp_i8["inputs"][slot]]["inputs"][0]]
        assert src["dtype"] == np.int8
        scale, zero_point = d_u8[pp_u8["inputs"][slot]]["quantization"]
        assert scale == src["quantization"][0] and zero_point == src["quantization"][1] + 128
    r_i8, r_u8, r_f = (_run(build(p), images) for p in ("int8", "uint8", "float"))
    for (det_i8, in_i8), (det_u8, in_u8), (det_f, in_f) in zip(r_i8, r_u8, r_f):
        for a, b in zip(det_i8, det_u8):
            np.testing.assert_allclose(a, b, atol=1e-6)
        for a, b in zip(in_i8, in_u8):
            np.testing.assert_allclose(a, b, atol=1e-6)
        assert np.abs(in_i8[1] - in_f[1]).max() < 0.15      # class predictions
        assert np.abs(in_i8[1] - in_f[1]).mean() < 0.02
        assert np.abs(in_i8[0] - in_f[0]).mean() < 0.1      # box encodings (int8 clips the extremes)


def test_uint8_qat_tracks_float(build, images):
    """The fake-quantized graph converted to uint8 keeps the float model's outputs (up to its
    input zero point 128 instead of 127.5 and uint8 rounding) and detections."""
    r_q, r_f = (_run(build(p), images) for p in ("uint8-qat", "float"))
    n_same = n = 0
    for ((b_q, c_q, s_q), in_q), ((b_f, c_f, s_f), in_f) in zip(r_q, r_f):
        np.testing.assert_array_equal(in_q[2], in_f[2])               # anchors, exact
        assert np.abs(in_q[1] - in_f[1]).max() < 0.1                   # class predictions
        assert np.abs(in_q[1] - in_f[1]).mean() < 0.01
        assert np.abs(in_q[0] - in_f[0]).mean() < 0.05                 # box encodings
        same_class = []
        for box, cls, score in zip(b_f, c_f, s_f):                     # float detections above 0.3 are found
            if score > 0.3:                                            # (the best class of an anchor may flip)
                iou = _iou(box, b_q)
                assert iou.max() > 0.9 and abs(s_q[iou.argmax()] - score) < 0.05
                same_class.append(c_q[iou.argmax()] == cls)
        n_same, n = n_same + sum(same_class), n + len(same_class)
    assert n >= 3 * len(images) and n_same >= 0.9 * n


def test_residual_uint8_qat_has_a_uint8_add_and_tracks_float(build, images):
    """``residual=True``: an inverted-residual block ``x + res_pw(relu6(res_dw(x)))``; in uint8-qat a
    uint8 ADD whose inputs (the [0, 6] ReLU6 output, the calibrated projection) and output have
    three different scales, as in the zoo's quantized SSD MobileNet v2; the model keeps the
    residual float model's outputs."""
    q, f = build("uint8-qat", residual=True), build("float", residual=True)
    assert q.name == "ssd_uint8-qat_fast_residual.tflite"
    interp = _interp(q)
    ops = [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
    details = {d["index"]: d for d in interp.get_tensor_details()}
    _check_all_uint8(ops, details, interp.get_input_details()[0], _pp_op(interp), extra=("ADD",))
    assert len([op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]) == 11
    (add,) = [op for op in ops if op["op_name"] == "ADD"]
    a, b, y = (details[i] for i in (*add["inputs"], *add["outputs"]))
    assert a["quantization"] == (pytest.approx(6 / 255), 0)           # the ReLU6 output
    assert len({a["quantization"][0], b["quantization"][0], y["quantization"][0]}) == 3
    assert {op["op_name"] for op in _interp(f)._get_ops_details()} >= {"ADD"}
    for ((_, _, s_q), in_q), ((_, _, s_f), in_f) in zip(_run(q, images), _run(f, images)):
        np.testing.assert_array_equal(in_q[2], in_f[2])               # anchors, exact
        assert np.abs(in_q[1] - in_f[1]).max() < 0.1                   # class predictions
        assert np.abs(in_q[1] - in_f[1]).mean() < 0.01
        assert np.abs(in_q[0] - in_f[0]).mean() < 0.05                 # box encodings
        assert abs(s_q.max() - s_f.max()) < 0.05


def _iou(box, boxes):
    """IoU of one [4] (ymin, xmin, ymax, xmax) box with each of [N, 4] boxes."""
    y0, x0 = np.maximum(box[:2], boxes[:, :2]).T
    y1, x1 = np.minimum(box[2:], boxes[:, 2:]).T
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area, areas = np.prod(box[2:] - box[:2]), np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


@pytest.mark.parametrize("precision", ["float", "uint8", "uint8-qat"])
def test_regular_nms(build, images, precision):
    path = build(precision, use_regular_nms=True, detections_per_class=3, max_detections=20,
                 score_threshold=0.25, iou_threshold=0.6, max_classes_per_detection=2)
    assert path.name == f"ssd_{precision}_regular.tflite"
    opts = _options(path)
    assert opts["use_regular_nms"] == 1 and opts["detections_per_class"] == 3 and opts["max_detections"] == 20
    assert opts["max_classes_per_detection"] == 2 and opts["num_classes"] == NUM_CLASSES
    assert opts["nms_score_threshold"] == np.float32(0.25) and opts["nms_iou_threshold"] == np.float32(0.6)
    assert (opts["y_scale"], opts["x_scale"], opts["h_scale"], opts["w_scale"]) == (10.0, 10.0, 5.0, 5.0)
    runs = _run(path, images)
    for (_, classes, s), _ in runs:
        assert np.bincount(classes.astype(int), minlength=NUM_CLASSES).max() <= 3
        assert (s >= 0.25 - 1e-6).all()
    scores = np.concatenate([s for (_, _, s), _ in runs])
    assert (scores > 0.5).any() and not (scores > 0.5).all()


def test_detections_per_class_option(build):
    assert _options(build("float"))["detections_per_class"] == 10
    for precision in ("float", "uint8-qat"):
        assert "detections_per_class" not in _options(build(precision, detections_per_class=None))


def test_deterministic_and_calibration_images(build, tmp_path, images):
    for precision in ("uint8", "uint8-qat"):
        again = fx.make_ssd_tflite(tmp_path / "again", precision=precision)
        assert again.read_bytes() == build(precision).read_bytes()
    assert fx.make_ssd_tflite(tmp_path, name="seed1.tflite", precision="float", seed=1).read_bytes() \
        != build("float").read_bytes()
    from detzoo.images import decode_image, demo_dir, list_images

    calib = [decode_image(p) for p in list_images(demo_dir("calib"))[:8]]   # 576x768, resized inside
    path = fx.make_ssd_tflite(tmp_path, name="vtest.tflite", precision="int8", calibration_images=calib)
    assert path.read_bytes() != build("int8").read_bytes()
    scores = np.concatenate([s for (_, _, s), _ in _run(path, images[-2:])])
    assert (scores > 0.5).any() and not (scores > 0.5).all()
