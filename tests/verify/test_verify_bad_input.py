"""Bad input to verify: one clear line, exit 2, nothing in the folder written or lost."""

import json

import pytest

from detzoo.manifest import Manifest
from tests.clihelp import assert_user_error, run_cli, snapshot


@pytest.fixture(autouse=True)
def _no_coco_env(monkeypatch):
    monkeypatch.delenv("COCO_IMG_PATH", raising=False)
    monkeypatch.delenv("COCO_ANNO_PATH", raising=False)


def _verify(entry, *extra):
    return run_cli("verify", entry, "--latency-runs", "0", "--quiet", *extra)


def _check(entry, result, *needles):
    before = snapshot(entry)
    assert_user_error(result(), 2, *needles)
    assert snapshot(entry) == before


def test_images_folder_missing(shapes_entry, tmp_path):
    _check(shapes_entry, lambda: _verify(shapes_entry, "--images", tmp_path / "nope"), "images folder not found", "nope")


def test_images_folder_empty_reference_mode(shapes_entry, tmp_path):
    (tmp_path / "empty").mkdir()
    _check(shapes_entry, lambda: _verify(shapes_entry, "--images", tmp_path / "empty"), "holds no images")


def test_images_folder_empty_ground_truth_mode(shapes_entry, shapes, tmp_path):
    (tmp_path / "empty").mkdir()
    _check(shapes_entry, lambda: _verify(shapes_entry, "--images", tmp_path / "empty", "--annotations", shapes[1]),
           "is empty")


def test_all_images_corrupt(shapes_entry, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"b{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _check(shapes_entry, lambda: _verify(shapes_entry, "--images", bad), "none of the 3 images could be decoded")


@pytest.mark.parametrize("content,needle", [
    ("{definitely not json", "not JSON"),
    ('{"annotations": [], "categories": []}', "lacks 'images'"),
    ('{"images": [{"id": 1, "file_name": "a.png"}], "categories": []}', "lacks 'annotations'"),
])
def test_bad_annotations(shapes_entry, shapes, tmp_path, content, needle):
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    _check(shapes_entry, lambda: _verify(shapes_entry, "--images", shapes[0], "--annotations", ann), needle, "ann.json")


def test_annotations_name_files_not_in_folder(shapes_entry, shapes, tmp_path):
    d = json.loads(shapes[1].read_text())
    d["images"][2]["file_name"] = "missing_0001.png"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(d))
    _check(shapes_entry, lambda: _verify(shapes_entry, "--images", shapes[0], "--annotations", ann),
           "missing_0001.png", "not in")


def test_annotations_without_images(shapes_entry, shapes):
    _check(shapes_entry, lambda: _verify(shapes_entry, "--annotations", shapes[1]), "needs --images")


def test_artifact_changed_is_refused(shapes_entry):
    m = Manifest.load(shapes_entry)
    art = shapes_entry / m.variants["fp32"].file
    art.write_bytes(art.read_bytes() + b"\0")
    _check(shapes_entry, lambda: _verify(shapes_entry), "changed", art.name)


def test_source_changed_is_refused(shapes_entry):
    p = shapes_entry / "manifest.json"
    d = json.loads(p.read_text())
    d["source"]["sha256"] = "0" * 64
    p.write_text(json.dumps(d))
    _check(shapes_entry, lambda: _verify(shapes_entry), "source", "changed")


def test_unknown_variant(shapes_entry):
    _check(shapes_entry, lambda: _verify(shapes_entry, "--variants", "fp32,int8"), "int8", "does not have")


def test_no_manifest(tmp_path):
    (tmp_path / "x").mkdir()
    assert_user_error(_verify(tmp_path / "x"), 2, "no manifest.json")


@pytest.mark.parametrize("opt,val", [("--limit", "0"), ("--threads", "0"), ("--max-drop", "-1"),
                                     ("--bootstrap", "-5"), ("--reference-threshold", "1.5")])
def test_bad_options(shapes_entry, opt, val):
    _check(shapes_entry, lambda: _verify(shapes_entry, opt, val), opt)


def test_earlier_report_survives_bad_input(shapes_entry, shapes, tmp_path):
    assert _verify(shapes_entry, "--images", shapes[0], "--limit", "3").exit_code == 0
    assert (shapes_entry / "report.json").is_file() and (shapes_entry / "REPORT.md").is_file()
    (tmp_path / "empty").mkdir()
    _check(shapes_entry, lambda: _verify(shapes_entry, "--images", tmp_path / "empty"), "holds no images")


def test_environment_variables_select_ground_truth_mode(shapes_entry, shapes, monkeypatch):
    monkeypatch.setenv("COCO_IMG_PATH", str(shapes[0]))
    monkeypatch.setenv("COCO_ANNO_PATH", str(shapes[1]))
    assert _verify(shapes_entry, "--limit", "4").exit_code == 0
    r = json.loads((shapes_entry / "report.json").read_text())
    assert r["mode"] == "ground_truth" and r["data"]["evaluated"] == 4
