"""verify on the tiny TF detector and the synthetic shapes set, whose ground truth the tests know."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from detzoo.coco.evaluation import STAT_NAMES
from detzoo.coco.instances import load_instances
from detzoo.detections import Detections
from detzoo.errors import CheckFailed
from detzoo.manifest import Manifest
from detzoo.verify import VerifyConfig, verify
from detzoo.verify.cache import CACHE_DIR
from tests.clihelp import run_cli
from tests.verify.conftest import add_shifted_variant


def _gt_cfg(entry, shapes, annotations, **kw):
    kw.setdefault("latency_runs", 0)
    return VerifyConfig(folder=entry, images=shapes[0], annotations=annotations, **kw)


def _cached_detections(entry, sha) -> dict:
    (path,) = (entry / CACHE_DIR).glob(f"{sha}-*.jsonl")
    out = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        out[d["id"]] = Detections.from_json(d["det"])
    return out


def _raw_pycocotools(ann_path, dets: dict, img_ids) -> list:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [r for i in sorted(dets) for r in dets[i].to_coco(i)]
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO(str(ann_path))
        e = COCOeval(g, g.loadRes(results), "bbox")
        e.params.imgIds = img_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(s) for s in e.stats]


def test_ground_truth_mode_real_map_zero_drop_equals_pycocotools(shapes_entry, shapes, shifted_annotations):
    res = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations))
    r = res.report.to_json()
    assert r["mode"] == "ground_truth" and res.passed
    src, art = r["models"]["source"], r["models"]["fp32"]
    assert 0.2 < src["coco"]["stats"]["AP"] < 0.9  # a real, non-trivial mAP
    assert abs(art["drop"]["AP"]) < 1e-6 and abs(art["drop"]["AP50"]) < 1e-6
    assert art["agreement"]["matched_share"] == 1.0
    # the report's stats are raw pycocotools' on the same detections, to the last digit
    m = Manifest.load(shapes_entry)
    ids = r["data"]["image_ids"]
    for name, sha in (("source", m.source["sha256"]), ("fp32", m.variants["fp32"].sha256)):
        raw = _raw_pycocotools(shifted_annotations, _cached_detections(shapes_entry, sha), ids)
        assert [r["models"][name]["coco"]["stats"][k] for k in STAT_NAMES] == raw


def test_exact_annotations_give_one(shapes_entry, shapes):
    r = verify(_gt_cfg(shapes_entry, shapes, shapes[1])).report.to_json()
    assert r["models"]["source"]["coco"]["stats"]["AP"] == 1.0
    assert r["models"]["fp32"]["coco"]["stats"]["AP"] == 1.0


def test_report_files_and_manifest(shapes_entry, shapes, shifted_annotations):
    res = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations))
    r = json.loads(res.report_json.read_text())
    m = Manifest.load(shapes_entry)
    assert r["manifest"]["variants"]["fp32"]["sha256"] == m.variants["fp32"].sha256
    assert r["models"]["source"]["sha256"] == m.source["sha256"]
    per_cat = r["models"]["source"]["coco"]["per_category"]
    assert [c["id"] for c in per_cat] == [1, 3] and [c["name"] for c in per_cat] == ["red_box", "green_box"]
    assert len(r["models"]["fp32"]["coco"]["pr_curves"]["0.50"]) == 101
    arrays = np.load(shapes_entry / "pr_arrays.npz")
    assert arrays["source_precision"].shape == (10, 101, 2, 4, 3)
    md = res.report_md.read_text()
    ap = r["models"]["source"]["coco"]["stats"]["AP"]
    assert "Mode: ground truth" in md
    assert f"| Average Precision (AP) | 0.50:0.95 | all | 100 | {ap:.3f} |" in md
    assert md.count("| Average Recall (AR) | 0.50:0.95 | all | 1 |") == 2  # one 12-line table per model
    assert md.count("| Average") == 24
    assert "| fp32 | onnxruntime | fp32 |" in md and "| source | tensorflow | fp32 |" in md
    v = m.results["verify"]
    assert v["mode"] == "ground_truth" and v["gate"]["passed"] and v["models"]["fp32"]["AP"] == ap


def test_limit_takes_first_ids_ascending(shapes_entry, shapes, shifted_annotations):
    r = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations, limit=5)).report.to_json()
    want = sorted(i["id"] for i in load_instances(shifted_annotations)["images"])[:5]
    assert r["data"]["image_ids"] == want and r["data"]["evaluated"] == 5
    assert r["models"]["source"]["coco"]["num_images"] == 5


def test_second_run_uses_cache_and_gives_identical_numbers(shapes_entry, shapes, shifted_annotations):
    first = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations)).report.to_json()
    assert first["models"]["source"]["inferences"] == 24
    second = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations)).report.to_json()
    for name in ("source", "fp32"):
        assert second["models"][name]["inferences"] == 0 and second["models"][name]["cache_hits"] == 24
        assert second["models"][name]["coco"] == first["models"][name]["coco"]


def test_torn_cache_line_is_tolerated_and_rerun(shapes_entry, shapes, shifted_annotations):
    first = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations)).report.to_json()
    m = Manifest.load(shapes_entry)
    (path,) = (shapes_entry / CACHE_DIR).glob(f"{m.variants['fp32'].sha256}-*.jsonl")
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # as if killed in the middle of the last write
    again = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations)).report.to_json()
    assert again["models"]["fp32"]["inferences"] == 1 and again["models"]["source"]["inferences"] == 0
    assert again["models"]["fp32"]["coco"] == first["models"]["fp32"]["coco"]
    lines = path.read_text().splitlines()
    assert len(lines) == 24 and all(json.loads(x) for x in lines)  # torn tail cut before the append


def test_changed_image_under_same_id_is_not_a_cache_hit(shapes_entry, shapes, shifted_annotations, tmp_path):
    verify(_gt_cfg(shapes_entry, shapes, shifted_annotations))
    images = tmp_path / "images"
    shutil.copytree(shapes[0], images)
    victim = sorted(images.iterdir())[0]
    Image.open(victim).transpose(Image.FLIP_LEFT_RIGHT).save(victim)
    r = verify(VerifyConfig(folder=shapes_entry, images=images, annotations=shifted_annotations,
                            latency_runs=0)).report.to_json()
    assert r["models"]["source"]["inferences"] == 1 and r["models"]["source"]["cache_hits"] == 23


def test_corrupt_image_skipped_and_listed(shapes_entry, shapes, shifted_annotations, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(shapes[0], images)
    victim = sorted(images.iterdir())[3]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    res = verify(VerifyConfig(folder=shapes_entry, images=images, annotations=shifted_annotations,
                              latency_runs=0))
    r = res.report.to_json()
    assert r["data"]["evaluated"] == 23 and [s["file"] for s in r["data"]["skipped"]] == [victim.name]
    assert victim.name in res.report_md.read_text()
    assert r["models"]["source"]["coco"]["num_images"] == 23 and res.passed


def test_rgba_and_grayscale_files_fed_as_the_source_expects(shapes_entry, shapes, shifted_annotations, tmp_path):
    """RGBA drops alpha (same boxes as RGB); grayscale is replicated to 3 channels (no colour, no boxes)."""
    images = tmp_path / "images"
    shutil.copytree(shapes[0], images)
    files = sorted(images.iterdir())
    Image.open(files[0]).convert("RGBA").save(files[0])
    Image.open(files[1]).convert("L").save(files[1])
    base = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations)).report.to_json()
    r = verify(VerifyConfig(folder=shapes_entry, images=images, annotations=shifted_annotations,
                            latency_runs=0)).report.to_json()
    assert r["data"]["evaluated"] == 24 and not r["data"]["skipped"]
    assert r["models"]["source"]["inferences"] == 2  # only the two changed files ran again
    m = Manifest.load(shapes_entry)
    dets = _cached_detections(shapes_entry, m.source["sha256"])  # last line per id wins: the new files
    by_name = {i["file_name"]: i["id"] for i in load_instances(shifted_annotations)["images"]}
    assert len(dets[by_name[files[1].name]]) == 0 or dets[by_name[files[1].name]].scores.max() < 0.3
    rgba_id = by_name[files[0].name]
    ref = {d["id"]: d for d in map(json.loads, next((shapes_entry / CACHE_DIR).glob(
        f"{m.source['sha256']}-*.jsonl")).read_text().splitlines()) if d["id"] == rgba_id}
    assert len(ref) == 1
    np.testing.assert_array_equal(Detections.from_json(ref[rgba_id]["det"]).boxes, dets[rgba_id].boxes)
    assert r["models"]["fp32"]["drop"]["AP"] == pytest.approx(0, abs=1e-9)
    assert base["models"]["source"]["coco"]["stats"]["AP"] > r["models"]["source"]["coco"]["stats"]["AP"]


def test_categories_never_emitted_warn(shapes_entry, shapes, shifted_annotations, tmp_path):
    d = json.loads(shifted_annotations.read_text())
    d["categories"].append({"id": 5, "name": "blue_box"})
    first = d["annotations"][0]
    d["annotations"].append({**first, "id": 99999, "category_id": 5})
    ann = tmp_path / "with_blue.json"
    ann.write_text(json.dumps(d))
    res = verify(_gt_cfg(shapes_entry, shapes, ann))
    assert res.passed and any("never emits categories [5]" in w for w in res.warnings)
    assert any("[5]" in w for w in res.report.to_json()["models"]["fp32"]["warnings"])
    assert "never emits categories [5]" in res.report_md.read_text()


def test_gate_names_the_variant_over_budget_and_keeps_the_report(shapes_entry, shapes, shifted_annotations):
    add_shifted_variant(shapes_entry)
    with pytest.raises(CheckFailed, match="shifted drops") as e:
        verify(_gt_cfg(shapes_entry, shapes, shifted_annotations, max_drop=1.0, bootstrap=200))
    assert "fp32" not in str(e.value)
    r = json.loads((shapes_entry / "report.json").read_text())
    assert r["gate"] == {"metric": "AP", "max_drop_points": 1.0, "failed": ["shifted"], "passed": False}
    drop = r["models"]["shifted"]["drop"]["AP"]
    ci = r["models"]["shifted"]["drop_ci"]
    assert drop > 0.05 and ci["low"] <= drop <= ci["high"] and ci["low"] > 0.01
    assert r["models"]["shifted"]["agreement"]["matched_share"] < 1.0
    assert Manifest.load(shapes_entry).results["verify"]["gate"]["failed"] == ["shifted"]
    # --variants picks what is verified; the fp32 artifact alone passes
    ok = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations, variants=["fp32"]))
    assert ok.passed and list(ok.report.to_json()["models"]) == ["source", "fp32"]


def test_gate_exit_codes_through_cli(shapes_entry, shapes, shifted_annotations):
    add_shifted_variant(shapes_entry)
    args = ["verify", shapes_entry, "--images", shapes[0], "--annotations", shifted_annotations,
            "--latency-runs", "0", "--quiet"]
    bad = run_cli(*args)
    assert bad.exit_code == 1 and "shifted" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    loud = run_cli(*[a for a in args if a != "--quiet"])  # prints REPORT.md's head, rendered from report.json
    head = (shapes_entry / "REPORT.md").read_text().split("\n## ")[0].rstrip()
    assert loud.exit_code == 1 and "Gate: FAILED (shifted)" in head and head in loud.stdout
    from detzoo.cli import _summary

    (shapes_entry / "REPORT.md").unlink()
    assert _summary(shapes_entry) == head
    assert run_cli(*args, "--max-drop", "100").exit_code == 0
    assert run_cli(*args, "--variants", "fp32").exit_code == 0


def test_latency_recorded(shapes_entry, shapes, shifted_annotations):
    r = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations, latency_runs=6, threads=2, limit=4)).report.to_json()
    for name in ("source", "fp32"):
        lat = r["models"][name]["latency"]
        assert lat["runs"] == 6 and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["throughput_ips"] == pytest.approx(1000 / lat["mean_ms"], rel=1e-3)
    assert r["models"]["source"]["speedup"] == 1.0
    assert r["models"]["fp32"]["speedup"] == pytest.approx(
        r["models"]["source"]["latency"]["p50_ms"] / r["models"]["fp32"]["latency"]["p50_ms"], rel=1e-3)
    assert r["latency"]["threads"] == 2 and len(r["latency"]["images"]) == 4
    assert "cpu" in r["machine"] and isinstance(r["machine"]["flags"], list)


def test_tflite_zero_based_twin_scores_the_same(tflite_entry_dir, shapes_entry, shapes, shifted_annotations, tmp_path):
    """TFLite post-processing emits 0-based ids; with the class offset applied it scores like its twin."""
    lite = tmp_path / "lite"
    shutil.copytree(tflite_entry_dir, lite)
    m = Manifest.load(lite)  # the source counts from 0; the artifact gives dataset ids itself
    assert m.source_spec().class_offset == 1 and m.io.class_offset == 0
    a = verify(_gt_cfg(lite, shapes, shifted_annotations)).report.to_json()
    b = verify(_gt_cfg(shapes_entry, shapes, shifted_annotations)).report.to_json()
    assert a["models"]["source"]["framework"] == "tflite"
    assert a["models"]["source"]["coco"]["stats"] == b["models"]["source"]["coco"]["stats"]
    assert a["models"]["fp32"]["coco"]["stats"] == b["models"]["fp32"]["coco"]["stats"]
    assert not a["models"]["source"]["warnings"] and a["models"]["source"]["coco"]["stats"]["AP"] > 0.2
