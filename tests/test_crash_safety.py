"""Crash safety and determinism: SIGKILL at several points leaves a consistent entry; equal inputs
give byte-identical artifacts."""

from __future__ import annotations

import shutil
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
    killed = 0
    for delay in (1.0, 2.5, 4.0, 6.0, 9.0):
        rc = _kill_after(_cli(*args), delay)
        assert_consistent(shapes_entry)
        if rc == 0:
            break
        killed += 1
    assert killed >= 2  # at least two kill points landed mid-run
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
