"""Fixed-size and batch-N latency against the dynamic fp32, and what the batch Loop costs.

``python -m benchmarks.bench_contract [--workdir DIR] [--runs N]`` builds the embedded default
with ``--input-size 300x300 --input-size 640x640`` (or reuses DIR), then times every artifact on
the demo evaluation frames fed as the zoo feeds them (OpenCV resize first), one intra-op thread,
round-robin over models so load hits all alike, and prints a Markdown table for BENCHMARKS.md.
Every ratio compares two models fed the same pixels in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.util import REPO, child_env, say, workdir


def _build(root: Path, say) -> Path:
    entry = root / "entry"
    if not (entry / "manifest.json").is_file():
        say("building the default entry with 300x300 and 640x640 variants")
        subprocess.run([sys.executable, "-m", "detzoo.cli", "build", "--out", str(entry), "--quiet", "--force",
                        "--input-size", "300x300", "--input-size", "640x640", "--latency-runs", "0"],
                       check=False, env=child_env(), cwd=REPO)
    return entry


def _unwrapped(path: Path, work: Path) -> Path:
    """The same artifact with its batch Loop inlined again (batch 1): what the Loop costs."""
    import onnx

    from detzoo.quantize import batch1

    model, _ = batch1.run(onnx.load(str(path)))
    out = work / (path.stem + ".batch1.onnx")
    onnx.save(model, str(out))
    return out


def measure(entry: Path, runs: int, work: Path, say) -> tuple[list, dict]:
    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.manifest import Manifest
    from detzoo.runners import OrtRunner, resize_like_cv2

    m = Manifest.load(entry)
    frames = [decode_image(p) for p in list_images(demo_dir("eval"))[:8]]
    feeds = {"raw": [f[None] for f in frames]}
    for h, w in ((300, 300), (640, 640)):
        feeds[f"{h}x{w}"] = [resize_like_cv2(f, h, w)[None] for f in frames]
    feeds["640x640 b4"] = [np.concatenate(feeds["640x640"][i:i + 4]) for i in (0, 4)]
    cases = []  # (label, precision, path, feed)
    for prec in ("fp32", "fp16", "int8"):
        if prec not in m.variants:
            continue
        dyn = entry / m.variants[prec].file
        cases += [(f"{prec} dynamic, frames as decoded (768x576)", prec, dyn, "raw")]
        if prec != "fp32":
            cases += [(f"{prec} batch-1 build without its Loop", prec, _unwrapped(dyn, work), "raw")]
        for size in ("300x300", "640x640"):
            cases.append((f"{prec} dynamic, fed {size}", prec, dyn, size))
            fixed = m.variants.get(f"{prec}-{size}")
            if fixed is not None:
                cases.append((f"{prec}-{size} (fixed), fed {size}", prec, entry / fixed.file, size))
        cases.append((f"{prec} dynamic, batch 4 of 640x640", prec, dyn, "640x640 b4"))
    runners = [OrtRunner(p, m.io, 1) for _, _, p, _ in cases]
    times = [[] for _ in cases]
    for r, (_, _, _, feed) in zip(runners, cases):
        r.activate()
        for x in feeds[feed][:3]:
            r.infer(x)
    say(f"timing {len(cases)} models x {runs} runs, round-robin")
    for i in range(runs):
        for k, (r, (_, _, _, feed)) in enumerate(zip(runners, cases)):
            batches = feeds[feed]
            r.infer(batches[i % len(batches)])
            times[k].append(r.last_inference_time * 1e3)
    rows = []
    for (label, prec, path, feed), t in zip(cases, times):
        batch = 4 if feed.endswith("b4") else 1
        p50 = statistics.median(t)
        rows.append({"label": label, "precision": prec, "feed": feed, "batch": batch, "p50_ms": p50,
                     "per_image_ms": p50 / batch, "size_mb": path.stat().st_size / 1e6})
    return rows, {"runs": runs, "frames": len(frames)}


def table(rows: list) -> str:
    base = {(r["precision"], r["feed"].split(" ")[0]): r["per_image_ms"] for r in rows if "dynamic" in r["label"]
            and r["batch"] == 1}
    out = ["| artifact, feeding | batch | p50 ms per call | ms per image | x dynamic, same pixels |",
           "|---|---|---|---|---|"]
    for r in rows:
        ref = base.get((r["precision"], r["feed"].split(" ")[0]))
        ratio = f"{r['per_image_ms'] / ref:.2f}" if ref else "-"
        out.append(f"| {r['label']} | {r['batch']} | {r['p50_ms']:.1f} | {r['per_image_ms']:.1f} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="keep (or reuse) the built entry here")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args(argv)
    from detzoo.manifest import machine_info

    t0 = time.perf_counter()
    with workdir(args.workdir, "bench-contract-") as (root, tmp):
        entry = _build(root, say)
        rows, info = measure(entry, args.runs, tmp, say)
    mach = machine_info()
    print(table(rows))
    print(f"\nCPU: {mach['cpu']}, class {mach['cpu_class']} ({', '.join(mach['flags'])}); 1 intra-op thread; "
          f"{info['runs']} round-robin runs per model over {info['frames']} demo frames; "
          f"{(time.perf_counter() - t0) / 60:.1f} min.")


if __name__ == "__main__":
    main()
