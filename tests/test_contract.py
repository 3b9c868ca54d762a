"""The contract wrapper's pieces: TF's resize in numpy and in ONNX, the batch Loop, sizes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from detzoo.contract import parse_size, resize_like_tf, tf_resize_nodes, wrap
from detzoo.errors import DetzooError

SIZES = [((96, 128), (64, 64)), ((576, 768), (300, 300)), ((120, 160), (640, 640)), ((300, 300), (300, 300)),
         ((427, 640), (320, 320)), ((7, 5), (3, 11))]


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _onnx_resize(img, h, w, half_pixel=True):
    nodes, consts = tf_resize_nodes("x", "y", h, w, "r/", half_pixel=half_pixel)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, None, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, None, None, 3])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    return _session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).run(
        None, {"x": img[None].astype(np.float32)})[0][0]


@pytest.mark.parametrize("src,dst", SIZES)
def test_resize_is_tf_resize_bit_for_bit_in_numpy_and_in_onnx(src, dst):
    import tensorflow as tf

    img = np.random.default_rng(sum(src + dst)).integers(0, 256, (*src, 3), dtype=np.uint8)
    want = tf.image.resize(img[None].astype(np.float32), dst).numpy()[0]
    np.testing.assert_array_equal(resize_like_tf(img, *dst), want)
    np.testing.assert_array_equal(_onnx_resize(img, *dst), want)


@pytest.mark.parametrize("src,dst", SIZES)
def test_tf1_resize_is_resize_images_bit_for_bit_in_numpy_and_in_onnx(src, dst):
    """The OD API's resizers call TF1's resize_images (no half-pixel centres), TF2 exports included:
    what a TFLite export of one expects in front of it."""
    import tensorflow as tf

    img = np.random.default_rng(sum(src + dst)).integers(0, 256, (*src, 3), dtype=np.uint8)
    want = tf.compat.v1.image.resize_images(img[None].astype(np.float32), dst).numpy()[0]
    np.testing.assert_array_equal(resize_like_tf(img, *dst, half_pixel=False), want)
    np.testing.assert_array_equal(_onnx_resize(img, *dst, half_pixel=False), want)
    if src != dst:
        assert np.abs(resize_like_tf(img, *dst) - want).max() > 1  # half-pixel centres: another image


def test_onnxruntime_own_resize_would_not_match():
    """Why the wrapper gathers neighbours itself: onnxruntime's linear Resize is off TF by a fraction of a level."""
    img = np.random.default_rng(0).integers(0, 256, (576, 768, 3), dtype=np.uint8)
    g = helper.make_graph([helper.make_node("Resize", ["x", "", "", "s"], ["y"], mode="linear",
                                            coordinate_transformation_mode="half_pixel")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None, None, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(np.array([1, 300, 300, 3], np.int64), "s")])
    theirs = _session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])).run(
        None, {"x": img[None].astype(np.float32)})[0][0]
    assert np.abs(theirs - resize_like_tf(img, 300, 300)).max() > 1e-3


def _toy_detector(in_type=TensorProto.FLOAT, hw=(8, 6)):
    """A batch-1, fixed-size 'detector': boxes from the mean pixel, 0-based classes, K = 2."""
    h, w = hw
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["xf"], ["m"], axes=[1, 2], keepdims=0),      # [1, 3]
        helper.make_node("Slice", ["m", "s0", "s2", "ax1"], ["m2"]),               # [1, 2]
        helper.make_node("Concat", ["m2", "m2"], ["b"], axis=1),                    # [1, 4]
        helper.make_node("Unsqueeze", ["b", "ax1"], ["b1"]),                        # [1, 1, 4]
        helper.make_node("Concat", ["b1", "b1"], ["boxes"], axis=1),                # [1, 2, 4]
        helper.make_node("Slice", ["m", "s0", "s2", "ax1"], ["scores"]),           # [1, 2]
        helper.make_node("Identity", ["cls_c"], ["classes"]),
        helper.make_node("Identity", ["num_c"], ["num"]),
    ]
    inits = {"axes12": np.array([1, 2], np.int64), "s0": np.array([0], np.int64), "s2": np.array([2], np.int64),
             "ax1": np.array([1], np.int64), "cls_c": np.array([[0.0, 2.0]], np.float32),
             "num_c": np.array([2.0], np.float32)}
    g = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", in_type, [1, h, w, 3])],
                          [helper.make_tensor_value_info("num", TensorProto.FLOAT, [1]),
                           helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 2, 4]),
                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2]),
                           helper.make_tensor_value_info("classes", TensorProto.FLOAT, [1, 2])],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("first_outside", [False, True])
@pytest.mark.parametrize("float_input", [True, False])
def test_wrapper_preprocesses_batches_and_offsets_classes_as_the_caller_would(float_input, first_outside):
    from detzoo.runners import preprocess
    from detzoo.source import IOSpec, TensorSpec

    inner = _toy_detector(TensorProto.FLOAT if float_input else TensorProto.UINT8)
    names = ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]
    wrapped = wrap(inner, input_name="image_tensor:0", output_names=names, resize=(8, 6),
                   scale=1 / 127.5 if float_input else None, offset=-1.0 if float_input else 0.0,
                   round_to_uint8=not float_input, class_offset=1, first_outside=first_outside)
    tops = [n.op_type for n in wrapped.graph.node]
    assert tops.count("Loop") == 1 and ("ReduceMean" in tops) == first_outside  # image 0 at the top level
    io = IOSpec(input=TensorSpec("x", "float32" if float_input else "uint8", [1, 8, 6, 3]),
                outputs=dict(zip(names, names)), resize=[8, 6], scale=1 / 127.5 if float_input else 1.0,
                offset=-1.0 if float_input else 0.0, class_offset=1)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 13, 17, 3), dtype=np.uint8)
    outer, one = _session(wrapped), _session(inner)
    got = outer.run(None, {"image_tensor:0": images})
    assert [o.shape for o in got] == [(3,), (3, 2, 4), (3, 2), (3, 2)]
    assert [o.shape for o in outer.run(None, {"image_tensor:0": images[:1]})] == [(1,), (1, 2, 4), (1, 2), (1, 2)]
    assert all(o.dtype == np.float32 for o in got)
    for i in range(3):
        want = one.run(None, {"x": preprocess(images[i], io)})
        np.testing.assert_allclose(got[1][i], want[1][0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got[2][i], want[2][0], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got[3][i], want[3][0] + 1)  # dataset ids, in the graph
        assert got[0][i] == want[0][0]


def test_wrapper_needs_one_input_and_four_outputs():
    m = _toy_detector()
    del m.graph.output[3]
    with pytest.raises(DetzooError, match="four outputs"):
        wrap(m, input_name="image_tensor:0", output_names=["a", "b", "c"])


@pytest.mark.parametrize("text,ok", [("300x300", (300, 300)), ("640X480", (640, 480)), ("0x300", None),
                                     ("abc", None), ("300", None), ("300x300x3", None), ("-1x5", None),
                                     ("9000x10", None)])
def test_sizes_are_parsed_or_refused_in_one_line(text, ok):
    if ok:
        assert parse_size(text) == ok
    else:
        with pytest.raises(DetzooError, match="--input-size"):
            parse_size(text)
