"""The typed report: what verify writes is what every reader loads, and the gate is judged in points."""

import json

import pytest

from detzoo.errors import DetzooError
from detzoo.verify import VerifyConfig, verify
from detzoo.verify.markdown import render_markdown, render_summary
from detzoo.verify.report import Gate, VerifyReport
from tests.verify.conftest import add_shifted_variant


@pytest.fixture(scope="module")
def verified(shapes_entry_dir, shapes, shifted_annotations, tmp_path_factory):
    """A ground-truth verification of fp32 and a shifted twin (a real drop), with a bootstrap CI."""
    import shutil

    entry = tmp_path_factory.mktemp("report") / "entry"
    shutil.copytree(shapes_entry_dir, entry)
    add_shifted_variant(entry)
    res = verify(VerifyConfig(folder=entry, images=shapes[0], annotations=shifted_annotations, latency_runs=3,
                              latency_images=2, bootstrap=20, max_drop=100.0))
    return entry, res


def test_report_json_round_trips_and_every_reader_sees_the_same_report(verified):
    entry, res = verified
    on_disk = json.loads((entry / "report.json").read_text())
    assert on_disk == res.report.to_json()
    loaded = VerifyReport.load(entry)
    assert loaded == res.report  # every field, typed: models, agreement, latency, gate
    assert loaded.to_json() == on_disk
    assert (entry / "REPORT.md").read_text() == render_markdown(loaded)
    assert render_markdown(loaded).startswith("\n".join(render_summary(loaded)).rstrip())
    fp32, shifted = loaded.models["fp32"], loaded.models["shifted"]
    assert fp32.agreement.matched_share == 1.0 and fp32.latency.p50_ms > 0
    assert shifted.drop_points == pytest.approx(on_disk["models"]["shifted"]["drop"]["AP"] * 100)
    low, high = shifted.drop_ci_points
    assert low <= shifted.drop_points <= high and shifted.drop_points > 1  # a real loss, in points


def test_gate_is_judged_in_points(verified):
    _, res = verified
    models = res.report.models
    drop = models["shifted"].drop_points
    assert Gate.judge("AP", drop + 0.01, models).passed
    tight = Gate.judge("AP", drop - 0.01, models)
    assert tight.failed == ["shifted"] and not tight.passed
    assert tight.to_json()["passed"] is False


def test_a_report_of_another_schema_is_refused_in_one_line(verified, tmp_path):
    entry, _ = verified
    d = json.loads((entry / "report.json").read_text())
    (tmp_path / "report.json").write_text(json.dumps({**d, "schema": "detzoo.report/0"}))
    with pytest.raises(DetzooError, match="cannot read .*report.json"):
        VerifyReport.load(tmp_path)
