"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_env(threads: int | None = None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1")
    return env


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (MB) of that process alone, exit status and output."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "rc": p.returncode,
            "output": out.decode(errors="replace")}


def python() -> str:
    return sys.executable


def median(xs) -> float:
    return float(statistics.median(xs))


def spread(xs) -> str:
    """min-max of the repeats, for the table."""
    return f"{min(xs):.2f}-{max(xs):.2f}" if len(xs) > 1 else "-"


def say(msg: str) -> None:
    """A progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(keep: Path | None, prefix: str):
    """(root, scratch): ``keep`` (created) or a temporary folder as root, and the temporary folder."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        yield root, Path(tmp)


def warm_up(runners: dict, batches: list, n: int = 3) -> None:
    """Load every runner and run it on the first ``n`` batches, before anything is timed."""
    for r in runners.values():
        r.activate()
        for b in batches[:n]:
            r.infer(b)
