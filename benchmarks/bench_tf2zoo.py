"""Every stage on each TF2 zoo family built by the real Object Detection API (tests/fixtures/tf2zoo.py).

Per family, as fresh processes: bare ``python -m tf2onnx.convert --saved-model`` against ``detzoo
convert`` (wall seconds, each including Python start and imports; detzoo's also the parity check on
the 40 demo frames), then ``detzoo quantize`` and ``detzoo verify`` in reference mode: fidelity AP of
each variant against the SavedModel and p50 latency at batch 1, one thread, side by side in one run.
Rows are printed as they finish (a Markdown table), and all figures written as JSON with ``--out``.

    python -m benchmarks.bench_tf2zoo [--families a,b] [--latency-runs 20] [--out results.json]

Needs the OD API (scripts/install --test); exports are built or taken from pytest's cache folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks.util import REPO, child_env, python, run_measured, say

SAVED_MODEL_FAMILIES = ("ssd_mobilenet_v2_128x128_4cls", "ssd_mobilenet_v2_fpnlite_128x128_4cls",
                        "efficientdet_d0_256x256_4cls", "centernet_resnet50_v1_fpn_128x128_4cls",
                        "faster_rcnn_resnet50_v1_128x128_4cls")
HEADER = ("| family | TF ops (NMS) | ONNX nodes | convert s detzoo / bare tf2onnx | parity: matched, score diff (tol), "
          "box diff | p50 ms TF / fp32 / fp16 / int8 | fidelity AP fp32 / fp16 / int8 |\n|---|---|---|---|---|---|---|")


def _cli(*args) -> dict:
    r = run_measured([python(), "-m", "detzoo.cli", *map(str, args)], env=child_env())
    if r["rc"] not in (0, 1):
        raise RuntimeError(f"detzoo {args[0]} exited {r['rc']}:\n{r['output'][-3000:]}")
    return r


def family(name: str, root: Path, latency_runs: int) -> dict:
    from detzoo.convert.inspect import inspect_model, inspect_onnx
    from detzoo.manifest import Manifest
    from tests.fixtures import tf2zoo

    export = tf2zoo.export(name, REPO / ".pytest_cache" / "d" / "detzoo-tf2zoo")
    info = inspect_model(export)
    say(f"{name}: bare tf2onnx")
    bare = run_measured([python(), "-m", "tf2onnx.convert", "--saved-model", str(export / "saved_model"),
                         "--opset", "17", "--output", str(root / f"{name}.bare.onnx")], env=child_env())
    if bare["rc"] != 0:
        raise RuntimeError(f"tf2onnx failed on {name}:\n{bare['output'][-3000:]}")
    entry = root / name
    shutil.rmtree(entry, ignore_errors=True)
    say(f"{name}: detzoo convert")
    conv = _cli("convert", export, "--out", entry)
    say(f"{name}: detzoo quantize")
    _cli("quantize", entry, "--quiet")
    say(f"{name}: detzoo verify")
    _cli("verify", entry, "--latency-runs", latency_runs, "--quiet")
    m = Manifest.load(entry)
    parity = m.variants["fp32"].checks["parity"]
    report = json.loads((entry / "report.json").read_text())
    models = report["models"]
    return {
        "family": name, "arch": info["family"]["name"], "tf_ops": info["op_count"], "nms": info["nms_ops"],
        "onnx_nodes": inspect_onnx(entry / m.variants["fp32"].file)["op_count"],
        "convert_s": {"detzoo": round(conv["wall_s"], 1), "bare_tf2onnx": round(bare["wall_s"], 1),
                      "detzoo_conversion_only": m.variants["fp32"].settings["conversion_seconds"]},
        "convert_passed": conv["rc"] == 0, "parity": parity,
        "p50_ms": {k: (v.get("latency") or {}).get("p50_ms") for k, v in models.items()},
        "fidelity_ap": {k: v["fidelity"]["stats"]["AP"] for k, v in models.items() if v.get("fidelity")},
    }


def row(r: dict) -> str:
    p, t, f = r["parity"], r["p50_ms"], r["fidelity_ap"]
    nms = ", ".join(f"{k} {v}" for k, v in r["nms"].items()) or "none"
    return (f"| {r['family']} ({r['arch']}) | {r['tf_ops']} ({nms}) | {r['onnx_nodes']} | "
            f"{r['convert_s']['detzoo']:.0f} / {r['convert_s']['bare_tf2onnx']:.0f} | "
            f"{p['matched']}/{p['reference']}, {p['max_score_diff']:.1e} ({p['tolerance']['score_atol']:.1e}), "
            f"{p['max_box_diff']:.1e} | "
            + " / ".join(f"{t.get(k) or 0:.1f}" for k in ("source", "fp32", "fp16", "int8")) + " | "
            + " / ".join(f"{f.get(k, float('nan')):.4f}" for k in ("fp32", "fp16", "int8")) + " |")


def main(argv=None) -> int:
    from benchmarks.util import workdir
    from detzoo.cpu import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(SAVED_MODEL_FAMILIES))
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the zoo entries here")
    args = ap.parse_args(argv)
    results = {"machine": machine_info(), "rows": []}
    print(HEADER, flush=True)
    with workdir(args.keep, "detzoo-bench-tf2zoo-") as (root, _):
        for name in args.families.split(","):
            r = family(name, root, args.latency_runs)
            results["rows"].append(r)
            print(row(r), flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
