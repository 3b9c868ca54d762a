"""``detzoo add``: a model made elsewhere becomes a variant that ``verify`` measures beside the others.

Bad input of every kind exits 2 with one line and leaves the entry byte for byte as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detzoo.add import add
from detzoo.fsutil import sha256_file
from detzoo.manifest import Manifest
from tests.clihelp import assert_user_error, run_cli, snapshot

HEAVY = ("tensorflow", "onnxruntime", "onnx", "tf2onnx", "pycocotools")


def _fp32(entry: Path) -> Path:
    return next(entry.glob("*.fp32.onnx"))


def _verify(entry: Path, shapes):
    from detzoo.verify import VerifyConfig, verify

    return verify(VerifyConfig(folder=entry, images=shapes[0], annotations=shapes[1], latency_runs=2)).report.to_json()


# --- small ONNX models built by hand -----------------------------------------------------------

def _save(model, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _const_detector(path: Path, num=2.0, scores=(0.9, 0.5), input_type=None, input_shape=("n", None, None, 3),
                    scores_through=None, functions=(), domains=()):
    """An ONNX with the detector's IO whose outputs are constants; ``scores_through(name, out)`` adds
    nodes (and initializers) between the raw scores and the output."""
    from onnx import TensorProto, helper, numpy_helper

    consts = {"num": np.array([num], np.float32), "boxes": np.array([[[.1, .1, .5, .5], [.2, .2, .6, .6]]], np.float32),
              "scores_raw": np.array([scores], np.float32), "classes": np.array([[1, 3]], np.float32)}
    nodes = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k)) for k, v in consts.items()]
    extra_nodes, inits = scores_through("scores_raw", "scores") if scores_through else (
        [helper.make_node("Identity", ["scores_raw"], ["scores"])], [])
    inp = helper.make_tensor_value_info("image_tensor:0", input_type or TensorProto.UINT8, list(input_shape))
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
            (("num", ["n"]), ("boxes", ["n", "k", 4]), ("scores", ["n", "k"]), ("classes", ["n", "k"]))]
    graph = helper.make_graph(nodes + extra_nodes, "const", [inp], outs, initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    return _save(helper.make_model(graph, opset_imports=opsets, functions=list(functions)), path)


def _classifier(path: Path) -> Path:
    """One uint8 image input, one [1, 10] output: a working model, but no detector."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                                  [1, 32, 32, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                              initializer=[numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                                           numpy_helper.from_array(np.ones((3, 10), np.float32), "w")])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _custom_op(path: Path, input_type=None) -> Path:
    """A working detector whose scores pass through an op of a custom domain (a model-local function)."""
    from onnx import helper

    fn = helper.make_function("my.custom", "Pass", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
                              [helper.make_opsetid("", 17)])
    return _const_detector(path, scores_through=lambda i, o: ([helper.make_node("Pass", [i], [o], domain="my.custom")],
                                                              []), functions=[fn], domains=["my.custom"], input_type=input_type)


def _tflite_classifier(path: Path, quantized: bool = False) -> Path:
    """A TFLite model taking uint8 images and giving [1, 10]: loadable, but no detector. ``quantized``:
    int8 weights (dynamic-range quantization), as a quantized model has them."""
    import tensorflow as tf

    w = tf.constant(np.linspace(-1, 1, 3 * 64 * 10, dtype=np.float32).reshape(3 * 64, 10))
    fn = tf.function(lambda x: tf.matmul(tf.tile(tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2]), [1, 64]), w),
                     input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.uint8)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if quantized:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    path.write_bytes(converter.convert())
    return path


def _qdq(i, o):
    from onnx import TensorProto, helper, numpy_helper

    return ([helper.make_node("QuantizeLinear", [i, "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], [o])],
            [numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp")])


def _fp16_weights(i, o):
    from onnx import TensorProto, helper, numpy_helper

    return ([helper.make_node("Cast", ["zero16"], ["zero"], to=TensorProto.FLOAT),
             helper.make_node("Add", [i, "zero"], [o])],
            [numpy_helper.from_array(np.zeros(1, np.float16), "zero16")])


# --- the positive paths --------------------------------------------------------------------------

def test_onnx_copy_is_verified_with_the_same_stats_as_fp32(shapes_entry, shapes, tmp_path):
    model = shutil.copy(_fp32(shapes_entry), tmp_path / "elsewhere.onnx")
    res = add(shapes_entry, model, "ort-copy")
    m = Manifest.load(shapes_entry)
    v = m.variants["ort-copy"]
    assert res.path == shapes_entry / f"{m.name}.ort-copy.onnx" and v.file == res.path.name
    assert (v.format, v.precision, v.parent, v.opset) == ("onnx", "fp32", None, 17)
    assert v.sha256 == sha256_file(res.path) == sha256_file(model) and v.size == res.path.stat().st_size
    assert v.settings["added_from"] == str(Path(model).resolve()) and v.settings["added_sha256"] == v.sha256
    assert v.settings["provenance"] == "detzoo add" and v.settings["contract"] is True
    assert v.settings["allow_unsafe_ops"] is False and v.checks["smoke"]["output_shapes"][1][2] == 4
    assert m.variant_io("ort-copy").to_dict() == m.io.to_dict()  # it takes what the entry's artifacts take

    report = _verify(shapes_entry, shapes)
    models = report["models"]
    assert models["ort-copy"]["framework"] == "onnxruntime" and models["ort-copy"]["sha256"] == v.sha256
    assert models["ort-copy"]["coco"]["stats"] == models["fp32"]["coco"]["stats"]
    assert models["fp32"]["coco"]["stats"]["AP"] > 0.5


def test_tflite_twin_is_verified_with_its_own_io(shapes_entry, shapes, shapes_tflite):
    res = add(shapes_entry, shapes_tflite, "tflite-fp32")
    v = Manifest.load(shapes_entry).variants["tflite-fp32"]
    assert (v.format, v.precision, v.opset, res.path.suffix) == ("tflite", "fp32", None, ".tflite")
    assert v.io["class_offset"] == 1 and v.io["resize"] == [96, 128] and v.io["input"]["shape"] == [1, 96, 128, 3]
    assert v.settings["contract"] is False and "0-based classes" in v.settings["contract_reason"]
    assert v.settings["contract_reason"].startswith("TFLite IO: ")

    report = _verify(shapes_entry, shapes)
    tfl, src = report["models"]["tflite-fp32"], report["models"]["source"]
    assert tfl["framework"] == "tflite" and tfl["precision"] == "fp32"
    assert src["coco"]["stats"]["AP"] > 0.5
    assert abs(tfl["coco"]["stats"]["AP"] - src["coco"]["stats"]["AP"]) <= 0.02


def test_cli_add_prints_one_line(shapes_entry, tmp_path):
    model = shutil.copy(_fp32(shapes_entry), tmp_path / "m.onnx")
    detzoo = Path(sys.executable).parent / "detzoo"
    r = subprocess.run([str(detzoo), "add", str(shapes_entry), str(model), "--variant", "ort-copy"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    sha = sha256_file(model)
    assert len(lines) == 1, r.stdout
    assert lines[0].startswith("added variant ort-copy: ") and "(onnx, fp32, sha256 " + sha[:12] in lines[0]
    assert Manifest.load(shapes_entry).variants["ort-copy"].sha256 == sha


def test_force_replaces_the_file_and_the_variant(shapes_entry, shapes_tflite, tmp_path):
    add(shapes_entry, shapes_tflite, "extra")
    name = Manifest.load(shapes_entry).name
    assert (shapes_entry / f"{name}.extra.tflite").is_file()
    res = add(shapes_entry, _const_detector(tmp_path / "c.onnx"), "extra", force=True)
    v = Manifest.load(shapes_entry).variants["extra"]
    assert res.replaced and v.format == "onnx" and v.sha256 == sha256_file(shapes_entry / f"{name}.extra.onnx")
    assert not (shapes_entry / f"{name}.extra.tflite").exists()
    assert not [p for p in shapes_entry.iterdir() if p.name.startswith(".detzoo")]


def test_precision_is_guessed_or_given(shapes_entry, tmp_path):
    cases = {"plain": (_const_detector(tmp_path / "a.onnx"), "fp32"),
             "qdq": (_const_detector(tmp_path / "b.onnx", scores_through=_qdq), "int8"),
             "half": (_const_detector(tmp_path / "c.onnx", scores_through=_fp16_weights), "fp16")}
    for variant, (path, want) in cases.items():
        assert add(shapes_entry, path, variant).variant.precision == want, variant
    given = add(shapes_entry, tmp_path / "a.onnx", "given", precision="int8").variant
    assert given.precision == "int8" and given.settings["precision_from"] == "--precision"


def test_tflite_precision_is_guessed_from_quantized_tensors(tmp_path, shapes_tflite):
    """A uint8 input alone is no sign of int8 (the float twin takes uint8 pixels); int8 weights are."""
    from detzoo.source import tflite_precision
    from detzoo.source import tflite_interpreter

    assert tflite_precision(tflite_interpreter(shapes_tflite)) == "fp32"
    assert tflite_precision(tflite_interpreter(_tflite_classifier(tmp_path / "f.tflite"))) == "fp32"
    assert tflite_precision(tflite_interpreter(_tflite_classifier(tmp_path / "q.tflite", quantized=True))) == "int8"


def test_fixed_size_onnx_is_fed_resized_with_opencv(shapes_entry, tmp_path):
    v = add(shapes_entry, _const_detector(tmp_path / "f.onnx", input_shape=(1, 64, 48, 3)), "fixed").variant
    assert v.io["resize"] == [64, 48] and v.io["resize_with"] == "cv2" and v.io["input"]["shape"] == [1, 64, 48, 3]
    assert v.settings["contract"] is False and "fixed size 64x48" in v.settings["contract_reason"]
    assert "batch fixed to 1" in v.settings["contract_reason"]


def test_custom_domain_op_accepted_with_allow_unsafe_ops(shapes_entry, tmp_path):
    v = add(shapes_entry, _custom_op(tmp_path / "custom.onnx"), "custom", allow_unsafe_ops=True).variant
    assert v.settings["allow_unsafe_ops"] is True and v.checks["smoke"]["detections"] == 2


# --- bad input -----------------------------------------------------------------------------------

def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _float():
    from onnx import TensorProto

    return TensorProto.FLOAT


# (id, args after "add" built from ctx, words the one line must hold)
ROWS = [
    ("classifier", lambda c: [c["entry"], _classifier(c["tmp"] / "classifier.onnx"), "--variant", "x"],
     ["classifier.onnx", "does not give detections", "logits [1, 10]", "num_detections [N]"]),
    ("detections-that-make-no-sense", lambda c: [c["entry"], _const_detector(c["tmp"] / "d.onnx", num=5.0),
                                                 "--variant", "x"],
     ["d.onnx", "num_detections is 5 with K = 2", "expected num_detections"]),
    ("scores-above-one", lambda c: [c["entry"], _const_detector(c["tmp"] / "s.onnx", scores=(1.7, 0.2)),
                                    "--variant", "x"], ["s.onnx", "[0.2, 1.7], not [0, 1]"]),
    ("float-input", lambda c: [c["entry"], _const_detector(c["tmp"] / "float.onnx", input_type=_float()),
                                "--variant", "x"], ["float.onnx", "float", "uint8"]),
    ("random-bytes-onnx", lambda c: [c["entry"], _write(c["tmp"] / "x.onnx", os.urandom(3000)), "--variant", "x"],
     ["x.onnx", "not a readable onnx model", "expected an onnx"]),
    ("tflite-classifier", lambda c: [c["entry"], _tflite_classifier(c["tmp"] / "cls.tflite"), "--variant", "x"],
     ["cls.tflite", "no TFLite_Detection_PostProcess", "expected a detector giving num_detections [N]"]),
    ("text-as-tflite", lambda c: [c["entry"], _write(c["tmp"] / "x.tflite", b"hello, I am text\n" * 20),
                                  "--variant", "x"], ["x.tflite", "not a loadable tflite model", "expected a tflite flatbuffer"]),
    ("neither-onnx-nor-tflite", lambda c: [c["entry"], _write(c["tmp"] / "x.bin", b"0" * 64), "--variant", "x"],
     ["x.bin", "expected an onnx model (.onnx) or a tflite"]),
    ("existing-variant", lambda c: [c["entry"], _fp32(c["entry"]), "--variant", "fp32"],
     ["variant 'fp32'", "--force"]),
    ("name-with-slash", lambda c: [c["entry"], _fp32(c["entry"]), "--variant", "a/b"], ["'a/b'", "plain name"]),
    ("name-hidden", lambda c: [c["entry"], _fp32(c["entry"]), "--variant", ".x"], ["'.x'", "plain name"]),
    ("name-source", lambda c: [c["entry"], _fp32(c["entry"]), "--variant", "source"], ["'source'", "source model", "another name"]),
    ("precision-unknown", lambda c: [c["entry"], _fp32(c["entry"]), "--variant", "x", "--precision", "int4"],
     ["'int4'", "fp32, fp16, int8"]),
    ("missing-dir", lambda c: [c["tmp"] / "nope", _fp32(c["entry"]), "--variant", "x"], ["entry folder not found", "nope", "manifest.json"]),
    ("dir-without-manifest", lambda c: [c["tmp"], _fp32(c["entry"]), "--variant", "x"], ["no manifest.json"]),
    ("missing-model", lambda c: [c["entry"], c["tmp"] / "gone.onnx", "--variant", "x"],
     ["model not found", "gone.onnx"]),
    ("custom-domain-op", lambda c: [c["entry"], _custom_op(c["tmp"] / "custom.onnx"), "--variant", "x"],
     ["custom.onnx", "my.custom::Pass", "--allow-unsafe-ops"]),
    # scanned before anything else looks at it: the refusal names the op, not the wrong input
    ("custom-domain-op-scanned-first", lambda c: [c["entry"], _custom_op(c["tmp"] / "c.onnx", _float()), "--variant",
                                                  "x"], ["c.onnx", "my.custom::Pass", "--allow-unsafe-ops"]),
]


@pytest.mark.parametrize("build,needles", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(tmp_path, shapes_entry, build, needles):
    ctx = {"tmp": tmp_path / "work", "entry": shapes_entry}
    ctx["tmp"].mkdir()
    args = build(ctx)
    manifest = (shapes_entry / "manifest.json").read_bytes()
    before = snapshot(shapes_entry)
    assert_user_error(run_cli("add", *args), 2, *needles)
    assert (shapes_entry / "manifest.json").read_bytes() == manifest
    assert snapshot(shapes_entry) == before, "the entry changed"


def test_tflite_is_scanned_before_anything_reads_it(shapes_entry, shapes_tflite, monkeypatch):
    """The scan refuses before the IO is read or the model runs; --allow-unsafe-ops skips it (recorded)."""
    import detzoo.convert.iodetect
    import detzoo.safety

    def refuse(path, ops):
        assert "TFLite_Detection_PostProcess" in {op["op_name"] for op in ops}
        raise detzoo.safety.UnsafeModelError(f"TFLite model {path.name} contains ops that reach outside the model: "
                                             "FlexReadFile (7); refusing to run it (pass --allow-unsafe-ops ...)")

    monkeypatch.setattr(detzoo.safety, "scan_tflite", refuse)
    before = snapshot(shapes_entry)
    with monkeypatch.context() as m:
        m.setattr(detzoo.convert.iodetect, "detect_io", lambda *a, **k: pytest.fail("IO read before the scan"))
        assert_user_error(run_cli("add", shapes_entry, shapes_tflite, "--variant", "t"), 2, shapes_tflite.name,
                          "FlexReadFile", "--allow-unsafe-ops")
    assert snapshot(shapes_entry) == before
    v = add(shapes_entry, shapes_tflite, "t", allow_unsafe_ops=True).variant
    assert v.settings["allow_unsafe_ops"] is True and v.format == "tflite"


def test_add_help_imports_nothing_heavy():
    code = ("import sys\nfrom detzoo.cli import app\n"
            "try:\n    app(['add', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted(m for m in " + repr(HEAVY) + " if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]" and "--variant" in r.stdout
