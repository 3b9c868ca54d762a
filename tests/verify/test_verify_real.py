"""The real pedestrian SSDLite on the embedded demo frames, reference mode."""

import json

import pytest

from detzoo.images import demo_dir, list_images
from detzoo.verify import VerifyConfig, verify


@pytest.mark.slow
def test_real_model_reference_mode_fidelity(real_fp32_copy):
    res = verify(VerifyConfig(folder=real_fp32_copy, latency_runs=3, bootstrap=100))
    r = res.report.to_json()
    assert res.passed and r["mode"] == "reference" and r["reference_threshold"] == 0.5
    assert r["data"]["images_dir"] == str(demo_dir("eval"))
    assert r["data"]["evaluated"] == len(list_images(demo_dir("eval"))) and not r["data"]["skipped"]
    fp32 = r["models"]["fp32"]
    assert fp32["coco"]["stats"]["AP"] >= 0.99 and fp32["fidelity"]["stats"]["AP"] >= 0.99
    assert r["models"]["source"]["coco"]["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)
    ag = fp32["agreement"]
    assert ag["reference"] > 50 and ag["matched_share"] >= 0.99 and ag["max_box_diff"] < 1e-3
    assert fp32["drop_ci"]["high"] <= 0.01
    md = res.report_md.read_text()
    assert "Mode: reference (no annotations)" in md and "fidelity AP" in md
    assert md.count("| Average Precision (AP) |") == 12
    assert fp32["latency"]["p50_ms"] > 0 and r["models"]["source"]["latency"]["p50_ms"] > 0
    assert [c["id"] for c in r["models"]["source"]["coco"]["per_category"]] == [1]  # one class: person
    assert json.loads((real_fp32_copy / "manifest.json").read_text())["results"]["verify"]["gate"]["passed"]
