"""convert/exact_resize.py: converted bilinear Resizes compute TF's ResizeBilinear bit for bit."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
tf = pytest.importorskip("tensorflow")
tf2onnx = pytest.importorskip("tf2onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from detzoo.convert.exact_resize import exact_tf_resize  # noqa: E402
from detzoo.onnxgraph import walk_nodes  # noqa: E402

tf1 = tf.compat.v1
CASES = [((576, 768), (120, 160)), ((576, 768), (160, 160)), ((427, 640), (320, 320)), ((7, 5), (3, 11))]
SCALE = 160 / 768  # the dynamic case: out = round(in * SCALE), as keep_aspect_ratio_resizer computes


def _graph(kind: str, half_pixel: bool, size=None, batch=1, static=None, map_fn=False):
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [batch, *(static or (None, None)), 3], name="x")

        def resize(im):
            if kind == "dyn":
                hw = tf.cast(tf.shape(im)[1:3], tf.float32)
                out = tf.cast(tf.round(hw * SCALE), tf.int32)
            else:
                out = list(size)
            return tf1.image.resize_bilinear(im, out, align_corners=False, half_pixel_centers=half_pixel)

        if map_fn:
            y = tf.map_fn(lambda im: resize(im[None])[0], x)
        else:
            y = resize(x)
        tf.identity(y, name="y")
    return g


def _tf_run(g, image):
    with tf1.Session(graph=g) as s:
        return s.run("y:0", {"x:0": image})


def _convert(g):
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    model, _ = tf2onnx.convert.from_graph_def(g.as_graph_def(), input_names=["x:0"], output_names=["y:0"],
                                              opset=17)
    return model


def _ort_run(model, image):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: image})[0]


def _image(h, w, batch=1, seed=0):
    return np.random.default_rng(seed + h * 7 + w).integers(0, 256, (batch, h, w, 3)).astype(np.float32)


def _resizes(model):
    return [n for n in walk_nodes(model.graph) if n.op_type == "Resize"]


def _exact(model):
    before = len(_resizes(model))
    out, n = exact_tf_resize(onnx.ModelProto.FromString(model.SerializeToString()))
    assert n == before >= 1
    assert not _resizes(out)
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("half_pixel", [False, True], ids=["asymmetric", "half_pixel"])
def test_bit_exact_with_tf(half_pixel):
    differs = []
    for (h, w), size in CASES:
        for kind in ("const", "dyn") if size == CASES[0][1] else ("const",):
            g = _graph(kind, half_pixel, size)
            model = _convert(g)
            image = _image(h, w)
            want = _tf_run(g, image)
            plain = _ort_run(model, image)
            assert plain.shape == want.shape
            differs.append(float(np.abs(plain - want).max()))
            got = _ort_run(_exact(model), image)
            np.testing.assert_array_equal(got, want, err_msg=f"{kind} {h}x{w} -> {size} half_pixel={half_pixel}")
    if not half_pixel:  # the pass matters: onnxruntime's own Resize rounds apart from TF here
        assert max(differs) > 1e-3, differs


def _inferred_dims(model, names):
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.name in names:
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return dims


def test_constant_output_size_stays_static():
    """A constant output size gives the rewrite's output a static height and width (its grids are
    constants; a Range would hide them from shape inference): quantize's batch-1 pass proves the OD
    API's postprocessing Loop runs once from such shapes."""
    model = _convert(_graph("const", False, (120, 160)))  # any input size, constant output size
    outs = {n.output[0] for n in _resizes(model)}
    after = _inferred_dims(_exact(model), outs)
    assert set(after) == outs and all(d[2:] == [120, 160] for d in after.values()), after


def test_dynamic_size_other_frames():
    g = _graph("dyn", False)
    model = _exact(_convert(g))
    for h, w in ((576, 768), (427, 640), (480, 640), (7, 5)):
        image = _image(h, w, seed=1)
        np.testing.assert_array_equal(_ort_run(model, image), _tf_run(g, image))


def test_static_input_scales():
    """A static input shape: tf2onnx gives the Resize constant sizes or scales."""
    g = _graph("const", False, (160, 160), static=(576, 768))
    model = _convert(g)
    image = _image(576, 768)
    np.testing.assert_array_equal(_ort_run(_exact(model), image), _tf_run(g, image))


@pytest.mark.parametrize("half_pixel", [False, True], ids=["asymmetric", "half_pixel"])
def test_static_exact_factor_is_left_alone(half_pixel):
    """A static x2 upsampling (a feature pyramid's): onnxruntime's coordinates already equal TF's, so
    the faster Resize stays, and still matches TF bit for bit."""
    g = _graph("const", half_pixel, (40, 64), static=(20, 32))
    model = _convert(g)
    out, n = exact_tf_resize(onnx.ModelProto.FromString(model.SerializeToString()))
    assert n == 0 and len(_resizes(out)) == len(_resizes(model)) == 1
    image = _image(20, 32)
    np.testing.assert_array_equal(_ort_run(out, image), _tf_run(g, image))


def test_scales_input_matches_onnx_output_size():
    """Only scales given: the output size is onnxruntime's (input * scale, truncated)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)
    scales = numpy_helper.from_array(np.array([1, 1, 160 / 768, 0.37], np.float32), "scales")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="linear",
                            coordinate_transformation_mode="asymmetric", name="r")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [scales, roi]),
                              opset_imports=[helper.make_opsetid("", 17)])
    image = _image(576, 767).transpose(0, 3, 1, 2).copy()
    want_shape = _ort_run(model, image).shape
    got = _ort_run(_exact(model), image)
    assert got.shape == want_shape
    from detzoo.contract import resize_like_tf

    want = resize_like_tf(image[0].transpose(1, 2, 0), got.shape[2], got.shape[3], half_pixel=False)
    np.testing.assert_array_equal(got[0].transpose(1, 2, 0), want)


def _single(node, inputs, inits, x_shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)
    return helper.make_model(helper.make_graph([node], "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case", ["nearest", "cubic", "channels", "unknown_sizes", "antialias"])
def test_left_alone(case):
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    attrs = {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}
    sizes = np.array([1, 3, 20, 20], np.int64)
    if case in ("nearest", "cubic"):
        attrs["mode"] = case
    if case == "channels":
        sizes = np.array([1, 6, 8, 8], np.int64)  # over the channel axis
    if case == "antialias":
        attrs["antialias"] = 1
    inits = [roi, numpy_helper.from_array(sizes, "sizes")]
    if case == "unknown_sizes":  # sizes fed from outside: nothing proves N and C stay
        node = helper.make_node("Resize", ["x", "roi", "", "s"], ["y"], **attrs)
        model = _single(node, [], [roi], [1, 3, 8, 8])
        model.graph.input.append(helper.make_tensor_value_info("s", TensorProto.INT64, [4]))
    else:
        node = helper.make_node("Resize", ["x", "roi", "", "sizes"], ["y"], **attrs)
        model = _single(node, [], inits, [1, 3, 8, 8])
    before = model.SerializeToString()
    out, n = exact_tf_resize(model)
    assert n == 0
    assert out.SerializeToString() == before


def test_inside_loop_body():
    """tf.map_fn becomes a Loop; its Resize is replaced and still matches TF."""
    v2 = tf1.control_flow_v2_enabled()
    tf1.disable_control_flow_v2()  # as TF1 OD API graphs: tf2onnx turns a v1 while loop into a Loop
    try:
        g = _graph("dyn", False, batch=None, map_fn=True)
    finally:
        if v2:
            tf1.enable_control_flow_v2()
    model = _convert(g)
    assert not any(n.op_type == "Resize" for n in model.graph.node)  # only in the body
    exact = _exact(model)
    image = _image(576, 768, batch=2)
    want = _tf_run(g, image)
    np.testing.assert_array_equal(_ort_run(exact, image), want)
    assert np.abs(_ort_run(model, image) - want).max() > 1e-3


def test_inside_handmade_loop_body_and_names_unique():
    """A Resize in a Loop body reading its sizes from the outer graph; two passes keep names unique."""
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    sizes = numpy_helper.from_array(np.array([1, 3, 120, 160], np.int64), "sizes")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Resize", ["x", "roi", "", "sizes"], ["r"], mode="linear",
                          coordinate_transformation_mode="asymmetric", name="resize"),
         helper.make_node("Identity", ["r"], ["r_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("r_out", TensorProto.FLOAT, [None] * 4)])
    trip = numpy_helper.from_array(np.array(2, np.int64), "trip")
    loop = helper.make_node("Loop", ["trip", ""], ["stacked"], body=body, name="loop")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 576, 768])
    y = helper.make_tensor_value_info("stacked", TensorProto.FLOAT, [None] * 5)
    model = helper.make_model(helper.make_graph([loop], "g", [x], [y], [roi, sizes, trip]),
                              opset_imports=[helper.make_opsetid("", 17)])
    image = _image(576, 768).transpose(0, 3, 1, 2).copy()
    plain = _ort_run(model, image)
    exact = _exact(model)
    got = _ort_run(exact, image)
    from detzoo.contract import resize_like_tf

    want = resize_like_tf(image[0].transpose(1, 2, 0), 120, 160, half_pixel=False).transpose(2, 0, 1)
    np.testing.assert_array_equal(got[0, 0], want)
    assert np.abs(plain[0, 0] - want).max() > 1e-3
