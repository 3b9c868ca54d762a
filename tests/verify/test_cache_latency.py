"""The detection cache (bit-exact, crash-tolerant) and latency statistics, without models."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from detzoo.detections import Detections
from detzoo.verify.cache import DetectionCache
from detzoo.verify.latency import LatencyStats, measure_latency

IO = {"input": {"name": "x"}, "class_offset": 0}


def _dets(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (5, 2))
    return Detections(np.hstack([xy, xy + rng.uniform(1, 30, (5, 2))]), rng.uniform(0, 1, 5), rng.integers(1, 4, 5))


def test_round_trip_is_bit_exact(tmp_path):
    c = DetectionCache(tmp_path, "ab" * 32, IO)
    for i in range(3):
        c.put(i, f"img{i}", (48, 64), _dets(i))
    again = DetectionCache(tmp_path, "ab" * 32, IO)
    for i in range(3):
        got, want = again.get(i, f"img{i}"), _dets(i)
        assert got.hw == (48, 64)
        for f in ("boxes", "scores", "classes"):
            np.testing.assert_array_equal(getattr(got.detections, f), getattr(want, f))
            assert getattr(got.detections, f).dtype == getattr(want, f).dtype


def test_keys_model_io_and_image_content(tmp_path):
    DetectionCache(tmp_path, "ab" * 32, IO).put(1, "imgA", (4, 4), _dets(0))
    assert DetectionCache(tmp_path, "ab" * 32, IO).get(1, "imgB") is None  # same id, other image
    assert DetectionCache(tmp_path, "cd" * 32, IO).get(1, "imgA") is None  # other model
    assert DetectionCache(tmp_path, "ab" * 32, {**IO, "class_offset": 1}).get(1, "imgA") is None  # other IO


@pytest.mark.parametrize("cut", [1, 7, 30])
def test_torn_last_line_ignored_then_cut_before_append(tmp_path, cut):
    c = DetectionCache(tmp_path, "ab" * 32, IO)
    c.put(1, "a", (4, 4), _dets(1))
    c.put(2, "b", (4, 4), _dets(2))
    c.path.write_bytes(c.path.read_bytes()[:-cut])
    d = DetectionCache(tmp_path, "ab" * 32, IO)
    assert d.get(1, "a") is not None and d.get(2, "b") is None and d.torn_lines == 1
    d.put(3, "c", (4, 4), _dets(3))
    lines = d.path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [1, 3]


def test_latency_stats():
    s = LatencyStats.from_seconds([0.010, 0.020, 0.030, 0.040], warmup=2)
    assert (s.p50_ms, s.mean_ms, s.min_ms, s.runs, s.warmup) == (25.0, 25.0, 10.0, 4, 2)
    assert s.throughput_ips == 40.0 and s.p50_ms <= s.p90_ms <= s.p99_ms <= 40.0


class _FakeRunner:
    def __init__(self, seconds):
        self.seconds, self.calls, self.last_inference_time = seconds, [], 0.0

    def activate(self):
        pass

    def infer(self, batch):
        self.calls.append(int(batch[0]))
        self.last_inference_time = self.seconds


def test_measure_latency_warms_up_then_interleaves_over_fixed_batches():
    a, b = _FakeRunner(0.002), _FakeRunner(0.001)
    out = measure_latency({"a": a, "b": b}, [np.array([7]), np.array([8])], runs=4, warmup=3)
    assert a.calls == [7, 8, 7] + [7, 8, 7, 8] and b.calls == a.calls
    assert out["a"].p50_ms == 2.0 and out["b"].p50_ms == 1.0 and out["a"].runs == 4


@pytest.mark.slow
def test_sigkill_mid_pass_leaves_readable_cache_and_resumes(shapes_entry, shapes, shifted_annotations):
    """Kill verify while it runs models; the folder stays valid and the next run resumes."""
    from detzoo.manifest import Manifest
    from detzoo.verify import VerifyConfig, verify
    from detzoo.verify.cache import CACHE_DIR

    manifest_before = (shapes_entry / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "detzoo.cli", "verify", str(shapes_entry), "--images",
                             str(shapes[0]), "--annotations", str(shifted_annotations), "--latency-runs", "0",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    sha = Manifest.load(shapes_entry).variants["fp32"].sha256
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            files = list((shapes_entry / CACHE_DIR).glob(f"{sha}-*.jsonl")) if (shapes_entry / CACHE_DIR).is_dir() else []
            if files and files[0].read_bytes().count(b"\n") >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("verify finished before it could be killed")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert (shapes_entry / "manifest.json").read_bytes() == manifest_before
    assert not (shapes_entry / "report.json").exists()
    done = DetectionCache(shapes_entry, sha, Manifest.load(shapes_entry).io.to_dict())
    assert 3 <= len(done.entries) < 24
    r = verify(VerifyConfig(folder=shapes_entry, images=shapes[0], annotations=shifted_annotations,
                            latency_runs=0)).report.to_json()
    assert r["models"]["fp32"]["inferences"] == 24 - len(done.entries)
    assert r["data"]["evaluated"] == 24 and r["models"]["fp32"]["drop"]["AP"] == pytest.approx(0, abs=1e-9)
