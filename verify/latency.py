"""Latency of the source and every artifact, apart from the accuracy pass.

All models are fed the same preprocessed batches (a fixed set of images) with the same intra-op
thread count. After warm-up, timed runs go round-robin over the models (one inference of each in
turn), so a burst of load from another process slows every model alike instead of whichever
happened to be measured at that moment. Only the model call is timed (``Runner.infer``):
decoding and preprocessing are shared and identical for all.

Owns: timing and its statistics. Does not touch: accuracy, files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detzoo.runners import Runner

WARMUP_RUNS = 5


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    throughput_ips: float  # images per second, from the mean call time and the batch
    batch: int = 1         # images per call; the percentiles are per call

    @classmethod
    def from_seconds(cls, times, warmup: int, batch: int = 1) -> "LatencyStats":
        ms = np.asarray(times, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        mean = float(ms.mean())
        return cls(len(ms), warmup, round(float(p50), 4), round(float(p90), 4), round(float(p99), 4),
                   round(mean, 4), round(float(ms.std()), 4), round(float(ms.min()), 4),
                   round(batch * 1e3 / mean, 3) if mean > 0 else 0.0, batch)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def measure_latency(runners: dict[str, Runner], batches, runs: int, warmup: int = WARMUP_RUNS, on_round=None,
                    batch: int = 1) -> dict[str, LatencyStats]:
    """Warm up each runner, then ``runs`` timed inferences of each, interleaved; batches cycle.

    ``batches``: one list fed to every runner, or a dict giving each runner its own (models with
    different preprocessing, the same images); ``batch``: images per call, for the throughput."""
    per = batches if isinstance(batches, dict) else {name: batches for name in runners}
    if runs < 1 or any(not per.get(name) for name in runners):
        raise ValueError("latency needs at least one run and one image")
    for name, r in runners.items():
        r.activate()
        for i in range(warmup):
            r.infer(per[name][i % len(per[name])])
    times = {name: [] for name in runners}
    for i in range(runs):
        for name, r in runners.items():
            r.infer(per[name][i % len(per[name])])
            times[name].append(r.last_inference_time)
        if on_round:
            on_round()
    return {name: LatencyStats.from_seconds(t, warmup, batch) for name, t in times.items()}
