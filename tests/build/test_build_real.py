"""The README's main job: `detzoo build` with no source, on the embedded default (slow; runs in CI)."""

import json

import pytest

from detzoo.images import list_images
from detzoo.manifest import Manifest
from tests.clihelp import run_cli


@pytest.mark.slow
def test_default_build_produces_a_verified_zoo_entry(tmp_path):
    out = tmp_path / "pedestrian"
    r = run_cli("build", "--out", out, "--latency-runs", "20", "--quiet")
    assert r.exit_code == 0, r.output
    m = Manifest.load(out)
    assert set(m.variants) == {"fp32", "fp16", "int8"}
    assert m.io.label_map == {1: "person"}
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "reference" and report["gate"]["passed"]
    models = report["models"]
    assert models["fp32"]["fidelity"]["stats"]["AP"] >= 0.99
    assert models["fp16"]["fidelity"]["stats"]["AP"] >= 0.98
    assert models["int8"]["fidelity"]["stats"]["AP"] >= 0.99   # --max-drop 1 holds on the evaluation frames
    # calibration frames never overlap the evaluation frames
    calib = set(m.variants["int8"].settings["calibration"]["ids"])
    evaluated = {p.name for p in list_images(report["data"]["images_dir"])}
    assert len(calib) == 25 and len(evaluated) == 40 and not calib & evaluated
    checked = set(m.variants["int8"].settings["check_images"]["ids"])  # the --max-drop search's images
    assert checked and not checked & evaluated and not checked & calib
    assert not any("tuned with --max-drop" in w for w in models["int8"]["warnings"])
    for name in ("report.html", "README.md", "REPORT.md"):
        assert (out / name).stat().st_size > 1000
    assert "person" in (out / "README.md").read_text()
