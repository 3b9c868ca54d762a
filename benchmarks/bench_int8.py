"""int8 ablation on the real pedestrian SSDLite: what each weight pass buys, on this CPU and exactly.

    python -m benchmarks.bench_int8 [--rounds 2] [--workdir DIR] [--photos DIR] [--json out.json]

One conversion, one calibration (the 25 demo calibration frames, minmax) and one pass of layer
statistics are shared by every row; each row changes one thing. For each int8 model:

* fidelity AP (COCO AP against the fp32 artifact's detections >= 0.5) on the demo check frames
  (what ``--max-drop`` tunes on), on the evaluation frames (what verify scores), and on
  ``--photos`` when given (the project ships no photos unlike the demo's one fixed camera);
* "exact": the same on the evaluation frames with onnxruntime's optimizations off, so every
  Q/DQ pair runs as float arithmetic on the integer values: what a CPU whose int8 kernels never
  saturate (VNNI, ARM) computes. A row whose two eval columns differ saturates on this CPU;
* p50 latency at 1 thread, interleaved with ONNX fp32 (the convert artifact) and its batch-1
  prepared twin, as a ratio to ONNX fp32 from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks.util import say, warm_up, workdir

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = [  # name, Int8Settings keywords, CLE
    ("8-bit weights, no pass (old VNNI default; not portable)", {"target": "vnni", "bias_correction": False}, False),
    ("7-bit weights everywhere (old default without VNNI)", {"reduce_range": True, "bias_correction": False}, False),
    ("portable bound: pair-bound GEMM, 8-bit depthwise", {"bias_correction": False}, False),
    ("+ bias correction (default)", {}, False),
    ("+ AdaRound (no bias correction)", {"bias_correction": False, "adaround": True}, False),
    ("+ AdaRound + bias correction", {"adaround": True}, False),
    ("CLE + portable bound", {"bias_correction": False}, True),
    ("CLE + portable bound + bias correction", {}, True),
    ("8-bit weights + bias correction (VNNI target; not portable)", {"target": "vnni"}, False),
]


def build(root: Path, say) -> tuple[dict, object, dict]:
    import onnx

    from detzoo.convert import ConvertConfig, convert
    from detzoo.defaults import default_model_path
    from detzoo.images import decode_image, demo_dir
    from detzoo.manifest import Manifest
    from detzoo.quantize import QuantizeConfig, quantize
    from detzoo.quantize import calibration, cle as equalization, int8, plan as precision, prepare
    from detzoo.quantize.calibration import pick_calibration_images
    from detzoo.quantize.int8 import Int8Settings, int8_op_types, stem_exclusions
    from detzoo.quantize.weights import collect_layer_stats, saturation_report
    from detzoo.runners import preprocess

    entry = root / "entry"
    if not (entry / "manifest.json").is_file():
        say("convert")
        convert(ConvertConfig(source=default_model_path(), out=entry))
    m = Manifest.load(entry)
    fp32 = entry / m.variants["fp32"].file
    prepared, _, _ = prepare.run(fp32, root)
    model = onnx.load(str(prepared))
    plan = precision.run(model)
    for node, why in stem_exclusions(model, plan).items():
        plan.exclude(node, why)
    calib = pick_calibration_images(demo_dir("calib"), None, [], at_most=256)
    sources = {False: prepared}
    say("CLE")
    sources[True], cle_report = equalization.run(prepared, model, calib, m.io, root, say)
    prep = {}
    for cle, src in sources.items():
        t = time.perf_counter()
        cache = root / f"calib_cle{int(cle)}.json"
        calibration.run(src, calib, m.io, int8_op_types(plan), cache, Int8Settings().calibration())
        stats = collect_layer_stats(src, plan.reduced({"Conv"}), (preprocess(decode_image(p), m.io)
                                                                 for p in calib.files))
        prep[cle] = (src, cache, stats, time.perf_counter() - t)
    models, info = {"ONNX fp32": fp32, "fp32 batch-1 (prepared)": prepared}, {"rows": {}}
    for name, kw, cle in ROWS:
        src, cache, stats, base_s = prep[cle]
        settings = Int8Settings(**kw)
        out = root / f"row{len(models)}.onnx"
        t = time.perf_counter()
        int8.run(src, plan, settings, cache, out, stats)
        say(f"{name}: {time.perf_counter() - t:.1f}s")
        port = saturation_report(onnx.load(str(out)))
        info["rows"][name] = {"seconds": round(time.perf_counter() - t, 1), "saturation_safe": port["saturation_safe"],
                              "largest_pair_sum": port["largest_pair_sum"]}
        models[name] = out
    say("quantize --max-drop 1 (the default build's int8)")
    md = root / "entry_maxdrop"
    if md.exists():
        shutil.rmtree(md)
    shutil.copytree(entry, md)
    t = time.perf_counter()
    res = quantize(QuantizeConfig(folder=md, fp16=False, max_drop=1.0, force=True))
    name = "+ bias correction + --max-drop 1 search (build's default)"
    models[name] = md / Manifest.load(md).variants["int8"].file
    info["rows"][name] = {"seconds": round(time.perf_counter() - t, 1), "saturation_safe": True,
                          "search": res.search}
    info["cle"] = cle_report
    info["prep_seconds"] = {str(k): round(v[3], 1) for k, v in prep.items()}
    return models, m, info


def measure(models: dict, m, rounds: int, photos: Path | None, say) -> dict:
    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.quantize.fidelity import FidelityProbe, check_image_paths
    from detzoo.runners import OrtRunner, preprocess

    fp32 = models["ONNX fp32"]
    sets = {"check": check_image_paths(demo_dir("check")), "eval": check_image_paths(demo_dir("eval"))}
    if photos:
        sets["photos"] = check_image_paths(photos)
    probes = {k: FidelityProbe(fp32, m.io, v) for k, v in sets.items()}
    out = {n: {"size_mb": round(Path(p).stat().st_size / 1e6, 2)} for n, p in models.items()}
    for n, p in models.items():
        for k, probe in probes.items():
            out[n][k] = probe.measure(Path(p)).ap
        out[n]["eval_exact"] = _measure_unfused(probes["eval"], Path(p))
        say(f"fidelity {n}: " + ", ".join(f"{k} {out[n][k]:.4f}" for k in (*probes, "eval_exact")))
    batches = [preprocess(decode_image(p), m.io) for p in list_images(demo_dir("eval"))[:10]]
    names = list(models)
    runners = {n: OrtRunner(Path(p), m.io, 1) for n, p in models.items()}
    warm_up(runners, batches)
    times = {n: [] for n in names}
    for _ in range(rounds):
        for k, b in enumerate(batches * 3):
            for n in names[k % len(names):] + names[:k % len(names)]:
                runners[n].infer(b)
                times[n].append(runners[n].last_inference_time * 1e3)
    for r in runners.values():
        r.deactivate()
    base = statistics.median(times["ONNX fp32"])
    for n in names:
        out[n]["p50_ms"] = round(statistics.median(times[n]), 2)
        out[n]["ratio"] = round(statistics.median(times[n]) / base, 3)
        out[n]["runs"] = len(times[n])
    return out


def _measure_unfused(probe, model: Path) -> float:
    """Fidelity on ``probe``'s images with every Q/DQ pair run as float ops (no int8 kernel, no saturation)."""
    from detzoo.coco.reference import fidelity
    from detzoo.images import decode_image
    from detzoo.runners import OrtRunner

    with OrtRunner(model, probe.io, 1, optimization_level="disable") as run:
        dets = {k: run.detect(decode_image(p)) for k, p in probe.images}
    return max(fidelity(probe.reference, dets, probe.sizes, threshold=0.5).map, 0.0)


def table(results: dict, info: dict, photos: bool) -> str:
    head = "| int8 model | check AP | eval AP | eval AP, exact int arithmetic |" + (" photos AP |" if photos else "") \
        + " saturation-safe | p50 ms 1T | x fp32 | MB |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for n, r in results.items():
        row_info = info["rows"].get(n, {})
        safe = {True: "yes", False: "**no**"}.get(row_info.get("saturation_safe"), "-")
        rows.append(f"| {n} | {r['check']:.4f} | {r['eval']:.4f} | {r['eval_exact']:.4f} |"
                    + (f" {r['photos']:.4f} |" if photos else "")
                    + f" {safe} | {r['p50_ms']:.1f} | {r['ratio']:.2f} | {r['size_mb']:.1f} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved passes over 30 frames for latency")
    ap.add_argument("--workdir", type=Path, help="keep the converted entry here (default: a temporary folder)")
    ap.add_argument("--photos", type=Path, help="extra images for a third fidelity column")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from detzoo.manifest import machine_info

    t0 = time.perf_counter()
    with workdir(args.workdir, "bench-int8-") as (root, _):
        models, m, info = build(root, say)
        results = measure(models, m, args.rounds, args.photos, say)
    mach = machine_info()
    print(table(results, info, args.photos is not None))
    search = info["rows"]["+ bias correction + --max-drop 1 search (build's default)"].get("search") or {}
    print(f"\nCPU: {mach['cpu']}, class {mach['cpu_class']} ({', '.join(mach['flags'])}); 1 intra-op thread; "
          f"{results['ONNX fp32']['runs']} interleaved runs per model; {(time.perf_counter() - t0) / 60:.1f} min.")
    print("Seconds to quantize each row: " + ", ".join(f"{n.split(' (')[0]} {r['seconds']}"
                                                          for n, r in info["rows"].items())
          + f"; calibration + layer statistics, shared: {info['prep_seconds']['False']}s.")
    if search:
        print("--max-drop 1 search (aims at 0.5 points on the check frames): " + "; ".join(
            f"step {s['step']}: {len(s['returned_to_float'])} back to float, check AP {s['fidelity_ap']:.4f}"
            for s in search["steps"]))
    print(f"CLE: {info['cle']}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "info": info, "machine": mach}, indent=2, default=str))


if __name__ == "__main__":
    main()
