"""Latency of the source and every artifact, apart from the accuracy pass.

All models are fed the same preprocessed batches (a fixed set of images) with the same intra-op
thread count. After warm-up, timed runs go round-robin over the models (one inference of each in
turn), so a burst of load from another process slows every model alike instead of whichever
happened to be measured at that moment. Only the model call is timed (``Runner.infer``):
decoding and preprocessing are shared and identical for all.
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
    throughput_ips: float  # images per second at batch 1, from the mean

    @classmethod
    def from_seconds(cls, times, warmup: int) -> "LatencyStats":
        ms = np.asarray(times, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        mean = float(ms.mean())
        return cls(len(ms), warmup, round(float(p50), 4), round(float(p90), 4), round(float(p99), 4),
                   round(mean, 4), round(float(ms.std()), 4), round(float(ms.min()), 4),
                   round(1e3 / mean, 3) if mean > 0 else 0.0)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def measure_latency(runners: dict[str, Runner], batches: list[np.ndarray], runs: int,
                    warmup: int = WARMUP_RUNS, on_round=None) -> dict[str, LatencyStats]:
    """Warm up each runner, then ``runs`` timed inferences of each, interleaved; batches cycle."""
    if runs < 1 or not batches:
        raise ValueError("latency needs at least one run and one image")
    for r in runners.values():
        r.activate()
        for i in range(warmup):
            r.infer(batches[i % len(batches)])
    times = {name: [] for name in runners}
    for i in range(runs):
        batch = batches[i % len(batches)]
        for name, r in runners.items():
            r.infer(batch)
            times[name].append(r.last_inference_time)
        if on_round:
            on_round()
    return {name: LatencyStats.from_seconds(t, warmup) for name, t in times.items()}
