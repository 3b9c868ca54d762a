"""`detzoo build` end to end on tiny fixtures with ground truth, report.html in a browser, reverify."""

import json
import re
import shutil
import subprocess

import pytest

from detzoo.manifest import Manifest
from tests.clihelp import assert_user_error, run_cli


@pytest.fixture(scope="module")
def tiny_entry(tmp_path_factory, shapes_saved_model, shapes):
    images, annotations = shapes
    out = tmp_path_factory.mktemp("build") / "entry"
    calib = tmp_path_factory.mktemp("calib")
    for p in sorted(images.iterdir())[:8]:  # calibration frames apart from the evaluation set
        shutil.copy(p, calib / ("c_" + p.name))
    r = run_cli("build", shapes_saved_model, "--out", out, "--images", images, "--annotations", annotations,
                "--calib-images", calib, "--latency-runs", "5", "--max-drop", "5", "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_entry_holds_everything(tiny_entry):
    names = {p.name for p in tiny_entry.iterdir()}
    assert {"manifest.json", "report.json", "REPORT.md", "report.html", "README.md"} <= names
    assert all(any(n.endswith(f".{p}.onnx") for n in names) for p in ("fp32", "fp16", "int8"))
    m = Manifest.load(tiny_entry)
    assert m.results["verify"]["mode"] == "ground_truth"
    report = json.loads((tiny_entry / "report.json").read_text())
    src = report["models"]["source"]["coco"]["stats"]["AP"]
    assert src > 0.5  # a real detector on the synthetic set
    assert abs(report["models"]["fp32"]["drop"]["AP"]) < 1e-3
    assert report["gate"]["passed"] and report["models"]["int8"]["drop"]["AP"] * 100 <= 5
    # int8 was tuned (--max-drop) on the user's evaluation images: the report says so
    assert any("tuned with --max-drop" in w for w in report["models"]["int8"]["warnings"])


def test_model_card_in_zoo_style(tiny_entry):
    card = (tiny_entry / "README.md").read_text()
    assert "| Average Precision (AP) | 0.50:0.95 | all | 100 |" in card
    assert len(re.findall(r"^\| Average (Precision|Recall)", card, re.M)) == 12 * 4  # source + 3 artifacts
    assert "Based on 24 images from COCO" in card and "in fp32 precision" in card
    assert "`input_tensor`, uint8" in card and "ort.InferenceSession" in card
    order = [card.index(f"`{n}`") for n in ("num_detections", "detection_boxes", "detection_scores",
                                             "detection_classes")]
    assert order == sorted(order)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_report_html_loads_in_headless_chromium(tiny_entry, tmp_path):
    """As a user would: the page loads offline, every embedded image decodes, no script errors."""
    r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                        (tiny_entry / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", r.stdout)
    assert body, r.stderr[-2000:]
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(0)))
    assert int(attrs["images"]) >= 6  # 4 plots + side-by-side examples
    assert attrs["broken"] == "0" and attrs["errors"] == "0"


def test_reverify_passes_on_untouched_entry(tiny_entry):
    r = run_cli("reverify", tiny_entry, "--quiet")
    assert r.exit_code == 0, r.output
    assert "no drift" in r.output


def test_reverify_detects_tampered_artifact(tiny_entry, tmp_path):
    entry = tmp_path / "e"
    shutil.copytree(tiny_entry, entry)
    art = next(entry.glob("*.fp32.onnx"))
    art.write_bytes(art.read_bytes() + b"\0")
    r = run_cli("reverify", entry, "--quiet")
    assert r.exit_code == 1 and "was modified" in r.output


def test_reverify_detects_changed_metric(tiny_entry, tmp_path):
    entry = tmp_path / "e"
    shutil.copytree(tiny_entry, entry)
    rep = json.loads((entry / "report.json").read_text())
    rep["models"]["fp32"]["coco"]["stats"]["AP50"] -= 0.05
    (entry / "report.json").write_text(json.dumps(rep))
    r = run_cli("reverify", entry, "--quiet")
    assert r.exit_code == 1 and "drift: fp32 AP50" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--precisions", "fp64"], "--precisions"), (["--threads", "0"], "--threads"),
    (["--max-drop", "-1"], "--max-drop"), (["--limit", "0"], "--limit"),
])
def test_build_bad_options(tmp_path, args, needle):
    assert_user_error(run_cli("build", "--out", tmp_path / "o", *args), 2, needle)
    assert not (tmp_path / "o").exists()


def test_reverify_on_another_cpu_class_remeasures_latency_instead_of_comparing(tiny_entry, tmp_path):
    entry = tmp_path / "e"
    shutil.copytree(tiny_entry, entry)
    here = json.loads((entry / "report.json").read_text())["machine"]["cpu_class"]
    other = "arm" if here != "arm" else "vnni"
    r = run_cli("reverify", entry, "--quiet", env={"DETZOO_CPU_CLASS": other})
    assert r.exit_code == 0, r.output
    assert f"cpu: recorded on a {here} CPU, this machine is {other}: latency re-measured here" in r.output
    assert "latency here: int8 p50" in r.output and "latency here: source p50" in r.output
    same = run_cli("reverify", entry, "--quiet")
    assert same.exit_code == 0 and "latency here" not in same.output and "cpu:" not in same.output


def test_verify_records_the_cpu_class_and_says_when_it_changed(tiny_entry, tmp_path, shapes):
    entry = tmp_path / "e"
    shutil.copytree(tiny_entry, entry)
    report = json.loads((entry / "report.json").read_text())
    here = report["machine"]["cpu_class"]
    assert report["latency"]["cpu_class"] == here and report["models"]["int8"]["latency"]["cpu_class"] == here
    assert Manifest.load(entry).results["verify"]["cpu_class"] == here
    other = "arm" if here != "arm" else "vnni"
    r = run_cli("verify", entry, "--images", shapes[0], "--annotations", shapes[1], "--latency-runs", "2",
                "--max-drop", "5", "--quiet", env={"DETZOO_CPU_CLASS": other})
    assert r.exit_code == 0, r.output
    again = json.loads((entry / "report.json").read_text())
    assert again["machine"]["cpu_class"] == other and again["latency"]["cpu_class"] == other
    assert any(f"previous verification ran on a {here} CPU, this one on {other}" in n for n in again["notes"])
    assert any(f"int8 was built on a {here} CPU" in n for n in again["notes"])
    assert f"previous verification ran on a {here} CPU" in (entry / "REPORT.md").read_text()
