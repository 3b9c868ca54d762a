"""Run every benchmark and write BENCHMARKS.md: ``python -m benchmarks [--quick] [--out PATH]``.

About 10 minutes on 2 cores (``--quick``: one repeat each, about 4). Each figure is a ratio of two
things measured in this run, interleaved, as the median of the repeats, so the numbers stay
meaningful on a machine other processes share; absolute seconds are for orientation only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.util import REPO, child_env

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _section(title: str, fn, lines: list, log):
    """Run one benchmark; a failure becomes a line in BENCHMARKS.md instead of stopping the rest."""
    t0 = time.perf_counter()
    log(f"{title} ...")
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - report any failure and go on with the other sections
        traceback.print_exc()
        lines += [f"## {title}", "", f"**Not measured**: {type(e).__name__}: {str(e)[:500]}", ""]
        return None
    log(f"{title}: {time.perf_counter() - t0:.0f}s")
    return out


def convert_md(r: dict) -> list[str]:
    out = ["## convert: `detzoo convert` vs bare tf2onnx", "",
           f"Real pedestrian SSDLite frozen graph (`{Path(r['source']).name}`). detzoo includes everything it adds "
           f"(sha256, unsafe-op scan, IO detection, contract, canonical ONNX, manifest) and its parity check on "
           f"{next(iter(r['rows'].values()))['parity_images']} demo frames; the baseline is "
           "`tf2onnx.convert.from_graph_def` + `onnx.save`. Both are fresh processes (start-up and imports "
           "included), alternating which runs first. Target: <= 1.3x.", "",
           "| threads | repeats | detzoo s | tf2onnx s | time ratio | ratio min-max | detzoo peak RSS MB | "
           "tf2onnx peak RSS MB | RSS ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for t, x in r["rows"].items():
        out.append(f"| {t} | {x['repeats']} | {x['detzoo_s']:.1f} | {x['tf2onnx_s']:.1f} | **{x['time_ratio']:.2f}x** "
                   f"| {x['ratio_spread']} | {x['detzoo_rss_mb']:.0f} | {x['tf2onnx_rss_mb']:.0f} | "
                   f"{x['rss_ratio']:.2f}x |")
    return out + [""]


def overhead_md(results: list, comp: dict | None) -> list[str]:
    out = ["## verify overhead: accuracy pass / pure inference", "",
           "Wall time of verify's accuracy pass (`open_models` + `collect_detections`, as `verify` runs them: each "
           "image read, hashed and decoded once in a prefetch thread, preprocessed once, run through every model, "
           "detections appended to the cache) divided by the summed `Runner.infer` time of the same models on the "
           "same images, pre-decoded, in a bare loop. Fresh runners on both sides (first-call warm-up counted "
           "alike). CPU ratio: process CPU seconds of the pass over those of the bare loop, the work verify adds "
           "whatever else the machine runs. Target: <= 1.10x; the floor is 1.0. Images: the 40 demo frames "
           "(768x576 JPEG) under several names.", "",
           "| models | images | threads | repeats | pass s | inference s | wall ratio | min-max | CPU ratio | "
           "CPU min-max | inference ms/image | rest ms/image |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for t, x in r["rows"].items():
            out.append(f"| {' + '.join(r['models'])} | {r['images']} | {t} | {x['repeats']} | {x['pass_s']:.2f} | "
                       f"{x['inference_s']:.2f} | **{x['ratio']:.3f}x** | {x['ratio_spread']} | "
                       f"{x['cpu_ratio']:.3f}x | {x['cpu_spread']} | {x['inference_s'] / r['images'] * 1e3:.1f} | "
                       f"{(x['pass_s'] - x['inference_s']) / r['images'] * 1e3:.1f} |")
    out.append("")
    if comp:
        out += [f"What verify itself spends per image, measured alone: sha256 {comp['sha256']:.2f} ms, decoding "
                f"{comp['decode']:.2f} ms (both in the prefetch thread), and {comp['detections_and_cache']:.2f} ms "
                "per model to convert its outputs and append them to the cache (JSON of 100 detections). Against "
                "the inference per image above, that work alone is the floor of the CPU ratio. On an idle "
                "multi-core machine the prefetch thread hides decoding and the wall ratio falls below the CPU "
                "ratio; on these 2 shared cores it competes with inference instead (in-pass inference runs a "
                "few percent slower than in the bare loop), so the wall ratio is about the CPU ratio. The fewer "
                "and faster the models, the larger the share: the two-model rows are the worst case.", ""]
    return out


def coco_md(r: dict) -> list[str]:
    tp, tf = r["seconds"]["pycocotools"], r["seconds"]["faster-coco-eval"]
    return ["## COCO evaluation: pycocotools vs faster-coco-eval", "",
            f"Synthetic set: {r['images']} images, {r['categories']} categories, {r['ground_truth']} ground-truth "
            f"boxes (1% crowd), {r['detections']} detections ({r['detections'] // r['images']} per image). Whole "
            "evaluation timed (index, loadRes, evaluate, accumulate, summarize), runs interleaved. Both are "
            "single-threaded for boxes, so one thread count is reported.", "",
            "| evaluator | runs | median s | speed-up |", "|---|---|---|---|",
            f"| pycocotools | {r['runs']['pycocotools']} | {tp:.1f} | 1.0x |",
            f"| faster-coco-eval | {r['runs']['faster-coco-eval']} | {tf:.1f} | **{tp / tf:.1f}x** |", "",
            f"12 stats identical: **{r['stats_identical']}** (max |diff| {r['max_stat_diff']:.3g}); precision/recall "
            f"arrays bit-identical: {r['arrays_identical']} (they differ only in the last bit where a category's "
            "first detections are all true positives). Adopted: verify evaluates with faster-coco-eval unless "
            "`--bootstrap` needs pycocotools' per-image matches; tests/test_coco_backends.py holds the 12 stats "
            "equal on every evaluation case of the test suite.", ""]


def memory_md(r: dict) -> list[str]:
    curve = r["pass_rss_mb"]
    return [f"## memory: verify on {r['images']:,} images", "",
            f"One `verify` (reference mode, source + fp32) of {r['images']} synthetic 320x240 JPEGs with a detector "
            f"returning 100 detections per image ({r['detections']} in all), in a fresh process; RSS sampled every "
            "50 ms.", "",
            f"- RSS through the accuracy pass, at each tenth: {', '.join(f'{v:.0f}' for v in curve)} MB "
            f"(+{curve[-1] - curve[1]:.0f} MB from 10% to 100% of the images, for the detections kept for "
            f"evaluation; holding the decoded images would take {r['decoded_images_mb']:.0f} MB).",
            f"- Peak RSS of the whole run: {r['peak_rss_mb']:.0f} MB, reached during COCO evaluation of "
            f"{r['detections'] // 2} detections per model (the COCO API holds them as Python dicts).",
            f"- Seconds: accuracy pass {r['seconds']['accuracy_pass']:.1f} (inference "
            f"{r['seconds']['inference']:.1f}), evaluation {r['seconds']['evaluation']:.1f}.", ""]


def _prepare_entry(tmp: Path, log) -> tuple[Path, list, str]:
    """The real model converted and quantized (fp16, int8) for the verify and latency benchmarks."""
    from detzoo.convert import ConvertConfig, convert
    from detzoo.defaults import default_model_path

    entry = tmp / "entry"
    convert(ConvertConfig(source=default_model_path(), out=entry))
    try:
        from detzoo.quantize import QuantizeConfig, quantize

        quantize(QuantizeConfig(folder=entry, fp16=True, int8=True, force=True))
        return entry, ["fp32", "fp16", "int8"], ""
    except Exception as e:  # noqa: BLE001 - quantize is another stage; measure what exists
        log(f"quantize failed ({type(e).__name__}: {e}); verifying fp32 only")
        return entry, ["fp32"], f"quantize failed: {type(e).__name__}"


def quantize_md(rounds: int, log) -> list[str]:
    """Latency (and fidelity) of the source and every precision: benchmarks/bench_quantize.py, the
    quantize stage's own benchmark, run as it is and its table included as it prints it."""
    title = "## latency: TF source, ONNX fp32, fp16, int8 (benchmarks/bench_quantize.py)"
    if importlib.util.find_spec("benchmarks.bench_quantize") is None:
        return [title, "", "**Not measured**: benchmarks/bench_quantize.py is not in the tree.", ""]
    p = subprocess.run([sys.executable, "-m", "benchmarks.bench_quantize", "--rounds", str(rounds), "--threads", "1,2"],
                       env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        return [title, "", f"**Not measured**: it exited {p.returncode}: "
                f"{(p.stderr.strip().splitlines() or [''])[-1][:300]}", ""]
    return [title, "", f"`python benchmarks/bench_quantize.py --rounds {rounds} --threads 1,2`, output as printed:",
            "", p.stdout.strip(), ""]


def int8_md(rounds: int, log) -> list[str]:
    """The int8 ablation (benchmarks/bench_int8.py), run as it is and its table included as it prints it."""
    title = "## int8 ablation: what each weight pass buys, on this CPU and exactly (benchmarks/bench_int8.py)"
    p = subprocess.run([sys.executable, "-m", "benchmarks.bench_int8", "--rounds", str(rounds)],
                       env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=2400)
    if p.returncode != 0:
        return [title, "", f"**Not measured**: it exited {p.returncode}: "
                f"{(p.stderr.strip().splitlines() or [''])[-1][:300]}", ""]
    from benchmarks import bench_int8

    doc = bench_int8.__doc__.split("\n\n", 2)[2].strip()
    return [title, "", doc, "", f"`python -m benchmarks.bench_int8 --rounds {rounds}`, output as printed:", "",
            p.stdout.strip(), ""]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat each, smaller sets (a smoke run)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = ap.parse_args(argv)

    from benchmarks import bench_convert, bench_verify, coco_eval_backends
    from detzoo.fsutil import atomic_write_text
    from detzoo.manifest import machine_info, now, tool_versions

    t_start = time.perf_counter()
    q = args.quick

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    body: list[str] = []
    with tempfile.TemporaryDirectory(prefix="detzoo-bench-") as tmp:
        tmp = Path(tmp)
        r = _section("convert", lambda: bench_convert.bench(1 if q else 3, (1, 2)), body, log)
        if r:
            body += convert_md(r)
        prepared = _section("entry", lambda: _prepare_entry(tmp, log), body, log)
        if prepared:
            entry, variants, note = prepared
            images = bench_verify.demo_copies(tmp / "images", 1 if q else 2)
            sets = [variants] + ([["fp32"]] if variants != ["fp32"] else [])
            res = []
            comp = _section("verify components", lambda: bench_verify.components(images), body, log)
            for vs in sets:
                o = _section(f"verify overhead {'+'.join(vs)}",
                             lambda vs=vs: bench_verify.overhead(entry, images, vs, (1, 2), 1 if q else 3), body, log)
                if o:
                    res.append(o)
            if res:
                body += overhead_md(res, comp) + ([f"Note: {note}.", ""] if note else [])
        lat = _section("latency (bench_quantize)", lambda: quantize_md(1 if q else 2, log), body, log)
        if lat:
            body += lat
        ab = _section("int8 ablation (bench_int8)", lambda: int8_md(1 if q else 2, log), body, log)
        if ab:
            body += ab
        r = _section("coco", lambda: coco_eval_backends.bench(1000 if q else 5000, 100, 1 if q else 3,
                                                               slow_repeats=1 if q else 2), body, log)
        if r:
            body += coco_md(r)
        r = _section("memory", lambda: bench_verify.memory(1000 if q else 5000, tmp), body, log)
        if r:
            body += memory_md(r)

    mach, tools = machine_info(), tool_versions()
    try:
        import ray  # noqa: F401 - only its version is wanted

        tools["ray"] = ray.__version__
    except ImportError:
        pass
    head = ["# detzoo benchmarks", "",
            f"Generated by `python -m benchmarks{' --quick' if q else ''}` on {now()} in "
            f"{(time.perf_counter() - t_start) / 60:.1f} minutes. Every figure is a ratio of two things measured in "
            "this run, interleaved, median of the repeats; the machine was shared with other work, so absolute "
            "seconds are for orientation only.", "",
            f"- Machine: {mach['cpu']}, {mach['cpu_count']} logical cores, {', '.join(mach['flags']) or 'no AVX2'}; "
            f"{mach['platform']}",
            f"- Python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in tools.items() if k != "python"),
            ""]
    atomic_write_text(args.out, "\n".join(head + body))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
