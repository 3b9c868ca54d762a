"""TFLite_Detection_PostProcess in ONNX against the TFLite interpreter, on the op alone.

Each model here is only the op (box encodings and class predictions are its inputs), so the tests
can feed what real detectors rarely show but the kernel defines: quantization-grid scores full of
ties, crowded overlapping boxes, nothing above the threshold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from detzoo.errors import DetzooError
from tests.fixtures.postprocess import make_postprocess_tflite, with_attrs

A = 200          # anchors
C = 3            # classes
TRIALS = 12


def _convert(path, opset=17):
    from detzoo.convert.core import run_tf2onnx
    from detzoo.source import open_source

    with open_source(path) as src:
        return run_tf2onnx(src, None, opset)


def _tflite(path, enc, cls):
    from detzoo.source import tflite_interpreter

    it = tflite_interpreter(path)
    for d in it.get_input_details():
        it.set_tensor(d["index"], enc if "box" in d["name"] else cls)
    it.invoke()
    by_name = {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}
    return [by_name[f"PartitionedCall:{i}"] for i in range(4)]  # boxes, classes, scores, num


def _onnx(model, enc, cls):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in s.get_outputs()],
                   s.run(None, {i.name: enc if "box" in i.name else cls for i in s.get_inputs()})))
    return [out[f"PartitionedCall:{i}"] for i in range(4)]


def _inputs(rng, kind, cols):
    enc = rng.normal(0, 1, size=(1, A, 4)).astype(np.float32)
    if kind == "float":
        cls = rng.uniform(0, 1, size=(1, A, cols))
    elif kind == "grid":  # a uint8 model's scores: 256 levels, ties everywhere
        cls = rng.randint(0, 256, size=(1, A, cols)) / 256.0
    else:  # "tied": few levels, whole runs of equal scores
        cls = rng.randint(0, 4, size=(1, A, cols)) / 4.0
    return enc, cls.astype(np.float32)


@pytest.fixture(scope="module")
def pp_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pp")
    cache = {}

    def get(**attrs):
        key = tuple(sorted(attrs.items()))
        if key not in cache:
            extra = {k: attrs.pop(k) for k in ("detections_per_class",) if k in attrs}
            name = "_".join(f"{k}{v}" for k, v in key) or "default"
            p = make_postprocess_tflite(root, num_anchors=A, name=f"{name}.tflite", **attrs)
            if extra:  # the converter drops detections_per_class: write it into the flatbuffer
                p = with_attrs(p, root / f"{name}_patched.tflite", **extra)
            cache[key] = (p, _convert(p))
        return cache[key]

    return get


@pytest.mark.parametrize("kind", ["float", "grid", "tied"])
@pytest.mark.parametrize("background", [True, False])
def test_fast_nms_is_bit_exact(pp_models, kind, background):
    """Fast NMS, one class per detection (every zoo SSD): equal outputs, ties included."""
    path, model = pp_models(background=background)
    rng = np.random.RandomState(7)
    seen = 0
    for _ in range(TRIALS):
        enc, cls = _inputs(rng, kind, C + background)
        t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
        n = int(t[3][0])
        assert o[3].tolist() == t[3].tolist()
        for a, b in zip(t[:3], o[:3]):
            np.testing.assert_array_equal(a[0, :n], b[0, :n])
        assert not o[2][0, n:].any()  # padding: zeros (TFLite leaves these rows unwritten)
        seen += n
    assert seen > TRIALS  # the op selected something


@pytest.mark.parametrize("kind", ["float", "grid"])
@pytest.mark.parametrize("attrs", [dict(use_regular_nms=True),
                                   dict(use_regular_nms=True, detections_per_class=2),
                                   dict(use_regular_nms=True, nms_iou_threshold=0.3, max_detections=25)],
                         ids=["regular", "regular-2-per-class", "regular-iou0.3-max25"])
def test_regular_nms_matches(pp_models, kind, attrs):
    """Regular NMS: the same detections and scores. Where the kernel's std::partial_sort meets equal
    scores its order is libstdc++'s heap order; only the order within such a tie may differ."""
    path, model = pp_models(**attrs)
    rng = np.random.RandomState(11)
    for _ in range(TRIALS):
        enc, cls = _inputs(rng, kind, C + 1)
        t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
        n = int(t[3][0])
        assert o[3].tolist() == t[3].tolist()
        np.testing.assert_array_equal(t[2][0, :n], o[2][0, :n])  # the score sequence itself
        full = n == attrs.get("max_detections", 10)
        cut = t[2][0, n - 1] if n and full else None
        for s in np.unique(t[2][0, :n]):
            if s == cut:
                continue  # a tie across the max_detections cut: which of them is kept is the sort's choice
            rows = lambda r: sorted(map(tuple, np.column_stack([r[1][0, :n], r[0][0, :n]])[r[2][0, :n] == s]))  # noqa: E731
            assert rows(t) == rows(o)


def test_regular_nms_distinct_scores_are_bit_exact(pp_models):
    path, model = pp_models(use_regular_nms=True)
    rng = np.random.RandomState(3)
    for _ in range(TRIALS):
        enc, cls = _inputs(rng, "float", C + 1)
        t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
        for a, b in zip(t, o):
            np.testing.assert_array_equal(a, b)


def test_several_classes_per_detection(pp_models):
    """max_classes_per_detection 2: boxes repeat per class; num_detections counts anchors, as the
    kernel's does."""
    path, model = pp_models(max_classes_per_detection=2)
    rng = np.random.RandomState(5)
    for _ in range(TRIALS):
        enc, cls = _inputs(rng, "float", C + 1)
        t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
        n = int(t[3][0])
        assert o[3].tolist() == t[3].tolist() and n > 0
        for a, b in zip(t[:3], o[:3]):
            np.testing.assert_array_equal(a[0, :2 * n], b[0, :2 * n])
        np.testing.assert_array_equal(o[0][0, 0:2 * n:2], o[0][0, 1:2 * n:2])


def test_thresholds_are_inclusive_and_empty_output(pp_models):
    """Scores equal to the threshold are kept (>=); nothing above it gives zeros and count 0."""
    path, model = pp_models(nms_score_threshold=0.5)
    rng = np.random.RandomState(1)
    enc = rng.normal(0, 1, size=(1, A, 4)).astype(np.float32)
    cls = np.full((1, A, C + 1), 0.25, np.float32)
    cls[0, 17, 2] = 0.5
    t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
    assert t[3].tolist() == o[3].tolist() == [1.0]
    assert o[2][0, 0] == 0.5 and o[1][0, 0] == 1.0
    cls[0, 17, 2] = np.nextafter(np.float32(0.5), np.float32(0))
    t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
    assert t[3].tolist() == o[3].tolist() == [0.0]
    assert not o[0].any() and not o[1].any() and not o[2].any()


def test_wide_encodings_decode_exactly(pp_models):
    """Box decoding runs in double like the kernel's: large and tiny encodings, same float bits."""
    path, model = pp_models(nms_score_threshold=0.0, max_detections=50)
    rng = np.random.RandomState(2)
    enc = rng.normal(0, 6, size=(1, A, 4)).astype(np.float32)
    cls = rng.uniform(0, 1, size=(1, A, C + 1)).astype(np.float32)
    t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
    n = int(t[3][0])
    assert n == 50
    np.testing.assert_array_equal(t[0][0, :n], o[0][0, :n])


def test_lowest_opset_converts(pp_models, tmp_path):
    path, _ = pp_models()
    model = _convert(path, opset=13)
    rng = np.random.RandomState(4)
    enc, cls = _inputs(rng, "grid", C + 1)
    t, o = _tflite(path, enc, cls), _onnx(model, enc, cls)
    for a, b in zip(t, o):
        np.testing.assert_array_equal(a[..., :int(t[3][0])] if a.ndim == 2 else a, b[..., :int(t[3][0])]
                                      if b.ndim == 2 else b)


@pytest.mark.parametrize("attrs, message", [
    (dict(max_classes_per_detection=5), "max_classes_per_detection 5; expected between 1 and num_classes (3)"),
    (dict(max_detections=0), "max_detections 0; expected >= 1"),
    (dict(nms_iou_threshold=1.5), "nms_iou_threshold 1.5; expected in (0, 1]"),
    (dict(y_scale=0.0), "y_scale 0; expected a finite number > 0"),
    (dict(use_regular_nms=True, detections_per_class=0), "detections_per_class 0; expected >= 1"),
    (dict(num_classes=7), "4 score columns for num_classes 7"),
])
def test_out_of_range_attributes_are_refused(pp_models, tmp_path, attrs, message):
    from detzoo.convert.tflite_postprocess import check_tflite

    path, _ = pp_models()
    bad = with_attrs(path, tmp_path / "bad.tflite", **attrs)
    with pytest.raises(DetzooError) as e:
        check_tflite(bad.read_bytes(), bad.name)
    assert message in str(e.value) and "bad.tflite" in str(e.value) and "\n" not in str(e.value)


def test_tf2onnx_approximation_is_what_this_replaces(pp_models):
    """The reason for this module: tf2onnx's own conversion of fast NMS (per-class standard NMS)
    selects other detections on tie-free inputs."""
    import tf2onnx

    path, model = pp_models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        approx, _ = tf2onnx.convert.from_tflite(str(path), opset=17)
    rng = np.random.RandomState(9)
    differ = 0
    for _ in range(TRIALS):
        enc, cls = _inputs(rng, "float", C + 1)
        t, a = _tflite(path, enc, cls), _onnx(approx, enc, cls)
        differ += not (np.array_equal(t[3], a[3]) and np.array_equal(t[2], a[2]))
    assert differ > 0
