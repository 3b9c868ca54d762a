"""The bad-input matrix: one row per case, across commands.

Every error row asserts the exact exit code, a one-line message naming the problem, no traceback,
and that the output folder is unchanged. Image rows that are not errors (odd colour modes, a
wrong extension, a corrupt file among good ones) assert what verify did with them instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.clihelp import assert_user_error, run_cli, snapshot


@pytest.fixture
def ctx(tmp_path, shapes_entry, shapes, shapes_saved_model, shapes_tflite):
    return {"tmp": tmp_path, "entry": shapes_entry, "images": shapes[0], "ann": shapes[1], "sm": shapes_saved_model,
            "tflite": shapes_tflite}


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _ann(c, edit) -> Path:
    d = json.loads(c["ann"].read_text())
    edit(d)
    return _write(c["tmp"] / "ann.json", json.dumps(d).encode())


def _manifest(c, edit) -> None:
    p = c["entry"] / "manifest.json"
    d = json.loads(p.read_text())
    edit(d)
    p.write_text(json.dumps(d))


def _verify(c, *extra):
    return ["verify", c["entry"], "--latency-runs", "0", "--quiet", *extra]


def _convert(c, src, *extra):
    return ["convert", src, "--out", c["tmp"] / "out", "--no-check", *extra]


def _savedmodel_without_variables(c):
    dst = c["tmp"] / "sm"
    shutil.copytree(c["sm"], dst)
    shutil.rmtree(dst / "variables")
    return _convert(c, dst)


def _savedmodel_proto_as_pb(c):
    p = _write(c["tmp"] / "model.pb", (c["sm"] / "saved_model.pb").read_bytes())
    return _convert(c, p)


def _truncated_tflite(c):
    return _convert(c, _write(c["tmp"] / "m.tflite", c["tflite"].read_bytes()[:3000]))


def _tflite_other_custom_op(c):
    from tests.fixtures.postprocess import with_custom_op_renamed

    return _convert(c, with_custom_op_renamed(c["tflite"], c["tmp"] / "m.tflite", "MyCustomOp"))


def _tflite_attrs_out_of_range(c):
    from tests.fixtures.postprocess import with_attrs

    return _convert(c, with_attrs(c["tflite"], c["tmp"] / "m.tflite", max_classes_per_detection=5))


def _tflite_two_inputs(c):
    from tests.fixtures.postprocess import make_postprocess_tflite

    return _convert(c, make_postprocess_tflite(c["tmp"], name="m.tflite"))


def _corrupt_artifact_recorded(c):
    """An ONNX file that is garbage but whose sha256 the manifest records (a corrupt upload)."""
    from detzoo.fsutil import sha256_file

    art = next(c["entry"].glob("*.fp32.onnx"))
    art.write_bytes(os.urandom(512))
    _manifest(c, lambda d: d["variants"]["fp32"].update(sha256=sha256_file(art)))
    return _verify(c)


def _broken_symlink(c):
    link = c["tmp"] / "frozen_inference_graph.pb"
    link.symlink_to(c["tmp"] / "gone.pb")
    return _convert(c, link)


# (id, build args from ctx, exit code, words the message must contain, folder that must not change)
ROWS = [
    # paths
    ("convert-missing-path", lambda c: _convert(c, c["tmp"] / "nope.pb"), 2, ["not found"], "out"),
    ("convert-broken-symlink", _broken_symlink, 2, ["not found"], "out"),
    ("convert-empty-folder", lambda c: _convert(c, (c["tmp"] / "empty").mkdir() or c["tmp"] / "empty"), 2,
     ["no model in"], "out"),
    ("convert-folder-named-like-a-model", lambda c: _convert(c, (c["tmp"] / "m.pb").mkdir() or c["tmp"] / "m.pb"),
     2, ["no model in"], "out"),
    ("inspect-missing-path", lambda c: ["inspect", c["tmp"] / "nope"], 2, ["not found"], None),
    ("verify-missing-folder", lambda c: ["verify", c["tmp"] / "nope"], 2, ["not found"], None),
    ("verify-folder-without-manifest", lambda c: ["verify", c["tmp"]], 2, ["no manifest.json"], None),
    # model files
    ("pb-random-bytes", lambda c: _convert(c, _write(c["tmp"] / "frozen_inference_graph.pb", os.urandom(3000))), 2,
     ["frozen_inference_graph.pb"], "out"),
    ("pb-truncated", lambda c: _convert(c, _write(c["tmp"] / "frozen_inference_graph.pb",
                                                 b"\n\x10\n\x0cimage_tensor\x12")), 2,
     ["frozen_inference_graph.pb"], "out"),
    ("pb-is-a-savedmodel-proto", _savedmodel_proto_as_pb, 2, ["savedmodel"], "out"),
    ("pb-empty-file", lambda c: _convert(c, _write(c["tmp"] / "frozen_inference_graph.pb", b"")), 2,
     ["no graph nodes"], "out"),
    ("tflite-random-bytes", lambda c: _convert(c, _write(c["tmp"] / "m.tflite", b"\0\0\0\0TFL3" + os.urandom(500))),
     2, ["m.tflite"], "out"),
    ("tflite-truncated", _truncated_tflite, 2, ["m.tflite"], "out"),
    ("tflite-other-custom-op", _tflite_other_custom_op, 2, ["m.tflite", "'MyCustomOp'",
                                                            "TFLite_Detection_PostProcess"], "out"),
    ("tflite-postprocess-attrs-out-of-range", _tflite_attrs_out_of_range, 2,
     ["m.tflite", "max_classes_per_detection 5", "num_classes (3)"], "out"),
    ("tflite-two-inputs", _tflite_two_inputs, 2, ["m.tflite", "2 inputs", "one image input"], "out"),
    ("onnx-as-source", lambda c: _convert(c, _write(c["tmp"] / "m.onnx", os.urandom(100))), 2,
     ["unsupported model file"], "out"),
    ("onnx-artifact-corrupt", _corrupt_artifact_recorded, 2, ["not a readable onnx"], "entry"),
    ("savedmodel-without-variables", _savedmodel_without_variables, 2, ["variables"], "out"),
    ("archive-corrupt", lambda c: _convert(c, _write(c["tmp"] / "m.tar.gz", b"\x1f\x8b\x08\0junk")), 2,
     ["m.tar.gz"], "out"),
    # IO names
    ("convert-wrong-input", lambda c: _convert(c, c["sm"], "--input", "pixels"), 2, ["--input", "pixels"], "out"),
    ("convert-wrong-outputs", lambda c: _convert(c, c["sm"], "--output", "a,b,c,d"), 2, ["--output", "a"], "out"),
    ("convert-three-outputs", lambda c: _convert(c, c["sm"], "--output", "a,b,c"), 2, ["4 names"], "out"),
    ("convert-into-existing-entry", lambda c: ["convert", c["sm"], "--out", c["entry"], "--no-check"], 2,
     ["already holds", "--force"], "entry"),
    # images
    ("verify-images-missing", lambda c: _verify(c, "--images", c["tmp"] / "nope"), 2, ["not found"], "entry"),
    ("verify-images-empty", lambda c: _verify(c, "--images", (c["tmp"] / "e").mkdir() or c["tmp"] / "e"), 2,
     ["no images"], "entry"),
    ("verify-all-images-corrupt", lambda c: _verify(c, "--images", _write(c["tmp"] / "bad" / "a.jpg",
                                                                          b"junk").parent), 2, ["a.jpg"], "entry"),
    # annotations
    ("ann-not-json", lambda c: _verify(c, "--images", c["images"], "--annotations",
                                       _write(c["tmp"] / "a.json", b"{not json")), 2, ["not json"], "entry"),
    ("ann-missing-file", lambda c: _verify(c, "--images", c["images"], "--annotations", c["tmp"] / "none.json"), 2,
     ["not found"], "entry"),
    ("ann-no-images-key", lambda c: _verify(c, "--images", c["images"], "--annotations",
                                            _ann(c, lambda d: d.pop("images"))), 2, ["'images'"], "entry"),
    ("ann-no-annotations-key", lambda c: _verify(c, "--images", c["images"], "--annotations",
                                                 _ann(c, lambda d: d.pop("annotations"))), 2, ["'annotations'"],
     "entry"),
    ("ann-bbox-not-numbers", lambda c: _verify(c, "--images", c["images"], "--annotations", _ann(
        c, lambda d: d["annotations"][0].update(bbox=["5", 5, 4, 10]))), 2, ["4-number 'bbox'"], "entry"),
    ("ann-negative-size", lambda c: _verify(c, "--images", c["images"], "--annotations", _ann(
        c, lambda d: d["annotations"][0].update(bbox=[5, 5, -4, 10]))), 2, ["negative size"], "entry"),
    ("ann-duplicate-image-id", lambda c: _verify(c, "--images", c["images"], "--annotations", _ann(
        c, lambda d: d["images"].append(dict(d["images"][0])))), 2, ["appears twice"], "entry"),
    ("ann-duplicate-annotation-id", lambda c: _verify(c, "--images", c["images"], "--annotations", _ann(
        c, lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]))), 2, ["repeated"], "entry"),
    ("ann-unknown-category", lambda c: _verify(c, "--images", c["images"], "--annotations", _ann(
        c, lambda d: d["annotations"][0].update(category_id=77))), 2, ["77"], "entry"),
    ("ann-file-not-in-folder", lambda c: _verify(c, "--images", c["images"], "--annotations", _ann(
        c, lambda d: d["images"][0].update(file_name="missing.png"))), 2, ["missing.png"], "entry"),
    ("ann-without-images", lambda c: _verify(c, "--annotations", c["ann"]), 2, ["--images"], "entry"),
    # manifest
    ("manifest-not-json", lambda c: (_write(c["entry"] / "manifest.json", b"{oops") and _verify(c)), 2,
     ["not valid json"], "entry"),
    ("manifest-wrong-schema", lambda c: (_manifest(c, lambda d: d.update(schema="other")) or _verify(c)), 2,
     ["not a detzoo manifest"], "entry"),
    ("manifest-missing-key", lambda c: (_manifest(c, lambda d: d.pop("io")) or _verify(c)), 2, ["malformed"],
     "entry"),
    ("manifest-sha-mismatch", lambda c: (_manifest(c, lambda d: d["variants"]["fp32"].update(sha256="0" * 64))
                                         or _verify(c)), 2, ["changed"], "entry"),
    ("manifest-path-dotdot", lambda c: (_manifest(c, lambda d: d["variants"]["fp32"].update(file="../x.onnx"))
                                        or _verify(c)), 2, ["../x.onnx"], "entry"),
    ("manifest-path-absolute", lambda c: (_manifest(c, lambda d: d["variants"]["fp32"].update(file="/etc/passwd"))
                                          or _verify(c)), 2, ["/etc/passwd"], "entry"),
    ("manifest-unknown-variant", lambda c: _verify(c, "--variants", "int4"), 2, ["int4"], "entry"),
    # options
    ("convert-threads-0", lambda c: _convert(c, c["sm"], "--threads", "0"), 2, ["--threads"], "out"),
    ("convert-opset-99", lambda c: _convert(c, c["sm"], "--opset", "99"), 2, ["--opset"], "out"),
    ("verify-threads-0", lambda c: _verify(c, "--threads", "0"), 2, ["--threads"], "entry"),
    ("verify-limit-negative", lambda c: _verify(c, "--limit", "-1"), 2, ["--limit"], "entry"),
    ("verify-max-drop-negative", lambda c: _verify(c, "--max-drop", "-1"), 2, ["--max-drop"], "entry"),
    ("verify-bootstrap-negative", lambda c: _verify(c, "--bootstrap", "-1"), 2, ["--bootstrap"], "entry"),
    ("verify-latency-runs-negative", lambda c: _verify(c, "--latency-runs", "-5"), 2, ["--latency-runs"], "entry"),
    ("build-precision-unknown", lambda c: ["build", c["sm"], "--out", c["tmp"] / "out", "--precisions", "int4"], 2,
     ["--precisions"], "out"),
]


@pytest.mark.parametrize("build,code,needles,watch", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(ctx, build, code, needles, watch):
    args = build(ctx)
    folder = ctx["tmp"] / watch if watch == "out" else ctx.get(watch)
    before = snapshot(folder) if folder else None
    assert_user_error(run_cli(*args), code, *needles)
    if folder is not None:
        assert snapshot(folder) == before, "the output folder changed"


def test_every_row_is_distinct_and_fully_checked():
    """What ``test_bad_input`` cannot see in a row itself: pytest runs a repeated id as id0/id1, a row
    without words passes on any one-line error, and a misspelt folder key skips the unchanged-folder check."""
    ids = [r[0] for r in ROWS]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    for row_id, _, code, needles, watch in ROWS:
        assert code == 2, (row_id, "bad input exits 2")
        assert needles and all(isinstance(n, str) and n.strip() for n in needles), (row_id, needles)
        assert watch in (None, "out", "entry"), (row_id, watch)


def test_boxes_past_the_image_evaluated_with_one_note(ctx):
    """Boxes 1-2 px past their image are no error (pycocotools evaluates them): verify evaluates them
    unchanged and says so once, in the report's notes, REPORT.md and on the console."""
    def overhang(d):
        width = {i["id"]: i["width"] for i in d["images"]}
        for a, over in zip(d["annotations"][:3], (1.5, 2, 1.25)):
            x, y, w, h = a["bbox"]
            a["bbox"] = [width[a["image_id"]] - w + over, y, w, h]

    r = run_cli("verify", ctx["entry"], "--latency-runs", "0", "--images", ctx["images"],
                "--annotations", _ann(ctx, overhang))
    assert r.exit_code == 0, r.output
    want = ("ann.json: 3 annotation box(es) extend more than 1 px past their image (largest overhang 2 px); "
            "evaluated as pycocotools does, unchanged")
    report = json.loads((ctx["entry"] / "report.json").read_text())
    assert [n for n in report["notes"] if "past their image" in n] == [want]
    assert not [w for m in report["models"].values() for w in m["warnings"] if "past their image" in w]
    assert (ctx["entry"] / "REPORT.md").read_text().count("past their image") == 1
    assert " ".join(r.stderr.split()).count(want) == 1  # the console wraps long lines


def _img(mode, path: Path):
    rgb = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    if mode == "I;16":
        Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(path, format="PNG")
    else:
        Image.fromarray(rgb).convert(mode).save(path, format="JPEG" if mode == "CMYK" else "PNG")


@pytest.mark.parametrize("name,make,skipped", [
    ("gray.png", lambda p: _img("L", p), False),
    ("cmyk.jpg", lambda p: _img("CMYK", p), False),
    ("deep16.png", lambda p: _img("I;16", p), False),
    ("alpha.png", lambda p: _img("RGBA", p), False),
    ("palette.png", lambda p: _img("P", p), False),
    ("png_named.jpg", lambda p: _img("RGB", p), False),
    ("zero.jpg", lambda p: p.write_bytes(b""), True),
    ("corrupt.jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0garbage"), True),
    ("huge.png", lambda p: Image.new("L", (8000, 7000)).save(p), True),
])
def test_odd_images_among_good_ones(ctx, name, make, skipped):
    """Odd colour modes are converted and evaluated; unreadable or > 50 MP images are skipped and listed."""
    folder = ctx["tmp"] / "imgs"
    shutil.copytree(ctx["images"], folder)
    make(folder / name)
    r = run_cli(*_verify(ctx, "--images", folder))
    assert r.exit_code == 0, r.output
    report = json.loads((ctx["entry"] / "report.json").read_text())
    listed = [s["file"] for s in report["data"]["skipped"]]
    assert (name in listed) == skipped, listed
    assert report["data"]["evaluated"] == len(list(folder.iterdir())) - skipped
    if name == "huge.png":
        assert "refused" in report["data"]["skipped"][0]["error"]
