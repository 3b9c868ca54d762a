"""Crash safety and determinism: SIGKILL at several points leaves a consistent entry; equal inputs
give byte-identical artifacts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detzoo.fsutil import TMP_PREFIX, sha256_file
from detzoo.manifest import Manifest


def assert_consistent(entry: Path) -> Manifest:
    """Every manifest entry's file exists with its recorded sha256."""
    m = Manifest.load(entry)
    for v in m.variants.values():
        path = entry / v.file
        assert path.is_file(), f"{v.file} listed but missing"
        assert sha256_file(path) == v.sha256, f"{v.file} does not match its sha256"
    return m


def _cli(*args) -> list[str]:
    return [sys.executable, "-c", "from detzoo.cli import main; main()", *map(str, args)]


def _kill_after(cmd, seconds: float) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("command", ["quantize", "verify"])
def test_sigkill_at_several_points_leaves_a_consistent_entry(command, shapes_entry, shapes):
    images, annotations = shapes
    args = {"quantize": ["quantize", shapes_entry, "--force", "--calib-images", images, "--calib-count", "4"],
            "verify": ["verify", shapes_entry, "--images", images, "--annotations", annotations,
                       "--latency-runs", "3", "--quiet"]}[command]
    assert subprocess.run(_cli(*args), capture_output=True).returncode == 0  # a complete entry to protect
    t0 = time.perf_counter()  # time a run like the killed ones (verify's later runs read its cache)
    assert subprocess.run(_cli(*args), capture_output=True).returncode == 0
    duration = time.perf_counter() - t0
    killed = 0
    for fraction in (0.2, 0.4, 0.6, 0.8, 0.9):  # start-up, model loading, the work, the install
        rc = _kill_after(_cli(*args), duration * fraction)
        assert_consistent(shapes_entry)
        killed += rc != 0
    assert killed >= 2
    assert subprocess.run(_cli(*args), capture_output=True).returncode == 0
    m = assert_consistent(shapes_entry)
    assert not list(shapes_entry.glob(TMP_PREFIX + "*")), "stray temporaries after a completed run"
    if command == "quantize":
        assert {"fp16", "int8"} <= set(m.variants)
    else:
        assert "verify" in m.results


@pytest.mark.slow
def test_verify_resumes_from_its_cache_after_a_kill(shapes_entry, shapes):
    import json

    images, annotations = shapes
    args = ["verify", shapes_entry, "--images", images, "--annotations", annotations, "--latency-runs", "0",
            "--quiet"]
    cache = shapes_entry / ".detzoo-cache"
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size for p in cache.rglob("*.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cached = sum(p.read_bytes().count(b"\n") for p in cache.rglob("*.jsonl"))
    assert cached >= 1
    assert subprocess.run(_cli(*args), capture_output=True).returncode == 0
    report = json.loads((shapes_entry / "report.json").read_text())
    hits = sum(m["cache_hits"] for m in report["models"].values())
    assert hits >= min(cached, 1)


def test_same_inputs_give_byte_identical_artifacts(shapes_entry_dir, shapes, tmp_path):
    """fp32 (convert), fp16 and int8 (quantize with fixed calibration order) twice: same sha256."""
    from detzoo.convert import ConvertConfig, convert
    from detzoo.quantize import QuantizeConfig, quantize

    shas = []
    for run in ("a", "b"):
        entry = tmp_path / run
        m0 = Manifest.load(shapes_entry_dir)
        source = Path(m0.source["path"])
        convert(ConvertConfig(source=source, out=entry, check=False))
        quantize(QuantizeConfig(folder=entry, calib_images=shapes[0], calib_count=6))
        m = Manifest.load(entry)
        shas.append({n: v.sha256 for n, v in m.variants.items()})
    assert set(shas[0]) == {"fp32", "fp16", "int8"}
    assert shas[0] == shas[1]
    assert shas[0]["fp32"] == Manifest.load(shapes_entry_dir).variants["fp32"].sha256


@pytest.mark.parametrize("renamed_before_kill", [0, 1, 2])
def test_half_done_commit_is_finished_by_the_next_reader(tmp_path, renamed_before_kill):
    """Kill between the journal and the manifest: whatever was renamed, the next load completes it."""
    import json
    import os

    from detzoo.fsutil import JOURNAL

    folder = tmp_path
    (folder / "a.onnx").write_bytes(b"old a")
    staged = {}
    for name, data in (("a.onnx", b"new a"), ("b.onnx", b"new b")):
        staged[name] = folder / f"{TMP_PREFIX}{name}"
        staged[name].write_bytes(data)
    manifest = {"schema": "detzoo.manifest/1", "name": "x", "source": {}, "io": {
        "input": {"name": "image_tensor:0", "dtype": "uint8", "shape": [1, None, None, 3]},
        "outputs": {r: r for r in ("num_detections", "detection_boxes", "detection_scores", "detection_classes")}},
        "variants": {n: {"name": n, "file": n, "precision": "fp32", "sha256": sha256_file(p), "size": 5}
                     for n, p in staged.items()}}
    (folder / JOURNAL).write_text(json.dumps({"renames": {n: p.name for n, p in staged.items()},
                                              "writes": {"manifest.json": manifest}}))
    for name in list(staged)[:renamed_before_kill]:  # the killed process got this far
        os.replace(staged[name], folder / name)
    m = assert_consistent(folder)
    assert (folder / "a.onnx").read_bytes() == b"new a" and set(m.variants) == {"a.onnx", "b.onnx"}
    assert not (folder / JOURNAL).exists() and not list(folder.glob(TMP_PREFIX + "*"))
