"""TFLite detectors: parity and fidelity against the TFLite interpreter, before and after.

``python -m benchmarks.bench_tflite [--images DIR] [--limit N]`` builds the test suite's SSD-shaped
TFLite family (float, int8, uint8 post-processing inputs, uint8-qat: every tensor uint8 as in the
zoo's quantized SSDs; fast and regular NMS; calibrated on the demo calibration frames) and converts each three ways:

* ``tf2onnx``: tf2onnx's own handler (per-class NonMaxSuppression for both NMS modes), int8 QDQ;
* ``exact NMS``: detzoo's TFLite_Detection_PostProcess, int8 QDQ as tf2onnx writes it;
* ``detzoo``: exact NMS and the uint8 relabelling (integer QLinearConv in onnxruntime).

Each runs on the demo evaluation frames (or ``--images``) beside the TFLite interpreter (default
kernels, XNNPACK), compared detection by detection (max differences in the source's output
quantization steps) and by fidelity AP (the interpreter's detections >= 0.5 as ground truth).

``--layers`` instead compares every int8 tensor of the int8 model, layer by layer, in steps:
TFLite's XNNPACK kernels (its default) against its builtin reference kernels (fixed-point
multipliers), and onnxruntime (int8 QDQ as tf2onnx writes it, and detzoo's uint8 relabelling)
against both.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path


@contextlib.contextmanager
def _variant(kind: str):
    """Switch off what detzoo adds, to measure what it changes."""
    from detzoo.convert import integer, tflite_postprocess

    saved = (tflite_postprocess.tf2onnx_handlers, tflite_postprocess.expand, integer.to_uint8_domain)
    if kind == "tf2onnx":
        tflite_postprocess.tf2onnx_handlers = dict
        tflite_postprocess.expand = lambda m: m
    if kind in ("tf2onnx", "exact NMS"):
        integer.to_uint8_domain = lambda m: (m, None)
    try:
        yield
    finally:
        tflite_postprocess.tf2onnx_handlers, tflite_postprocess.expand, integer.to_uint8_domain = saved


def measure(source: Path, out: Path, images: Path, limit: int | None, kind: str) -> dict:
    from detzoo.coco.reference import fidelity
    from detzoo.convert import ConvertConfig, convert
    from detzoo.convert.parity import ParityTolerance, check_parity
    from detzoo.convert.tflite_postprocess import output_steps
    from detzoo.images import decode_image, list_images
    from detzoo.manifest import Manifest
    from detzoo.runners import OrtRunner, source_runner
    from detzoo.source import ModelFormat

    with _variant(kind):
        res = convert(ConvertConfig(source=source, out=out, check=False, force=True))
    m = Manifest.load(out)
    v = m.variants[res.variant]
    loose = ParityTolerance(score_atol=1.0, box_atol=1.0)
    files = list_images(images)[:limit]
    with source_runner(ModelFormat.TFLITE, source, m.source_spec()) as s, OrtRunner(out / v.file, m.io) as o:
        p = check_parity(s, o, images, loose, limit)
        ref, cand, sizes = {}, {}, {}
        for k, f in enumerate(files, 1):
            img = decode_image(f)
            sizes[k], ref[k], cand[k] = img.shape[:2], s.detect(img), o.detect(img)
    steps = output_steps(source.read_bytes())
    a = p.agreement
    fid = fidelity(ref, cand, sizes, threshold=0.5)
    return {"matched": f"{a.matched}/{a.reference}", "unmatched": a.unmatched_reference + a.unmatched_candidate,
            "score": a.max_score_diff / steps.score_step if steps else a.max_score_diff,
            "box": a.max_box_diff / steps.box_step if steps else a.max_box_diff,
            "in_steps": steps is not None, "fidelity": max(fid.map, 0.0)}


def _nchw(model, name: str) -> bool:
    """Whether tf2onnx's tensor ``name`` is channels-first (made by a Conv, through Clip/Relu/Q)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    n = prod.get(name)
    while n is not None and n.op_type in ("QuantizeLinear", "Clip", "Relu"):
        n = prod.get(n.input[0])
    return n is not None and n.op_type == "Conv"


def layers(source: Path, images: Path, limit: int | None) -> list:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import tensorflow as tf

    from detzoo.convert.core import run_tf2onnx
    from detzoo.convert.integer import to_uint8_domain
    from detzoo.images import decode_image, list_images
    from detzoo.source import open_source

    with open_source(source) as src:
        int8 = run_tf2onnx(src, None, 17)
    uint8, _ = to_uint8_domain(onnx.load_from_string(int8.SerializeToString()))
    ref = tf.lite.Interpreter(model_content=source.read_bytes(), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=tf.lite.experimental.OpResolverType.
                              BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ref.allocate_tensors()
    xnn = tf.lite.Interpreter(model_content=source.read_bytes(), experimental_preserve_all_tensors=True)
    xnn.allocate_tensors()
    details = [d for d in ref.get_tensor_details() if d["dtype"] == np.int8]
    produced = {o for n in int8.graph.node for o in n.output}
    names = [d["name"] for d in details if d["name"] in produced]
    sessions = {}
    for tag, m in (("ORT int8 QDQ", int8), ("ORT uint8 (detzoo)", uint8)):
        m = onnx.load_from_string(m.SerializeToString())
        m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
        sessions[tag] = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    layout = {n: _nchw(int8, n) for n in names}
    inp = ref.get_input_details()[0]
    h, w = inp["shape"][1:3]
    stats = {}
    for f in list_images(images)[:limit]:
        x = tf.image.resize(decode_image(f)[None], (h, w)).numpy().round().clip(0, 255).astype(np.uint8)
        got = {}
        for tag, it in (("XNNPACK", xnn), ("builtin", ref)):
            it.set_tensor(inp["index"], x)
            it.invoke()
            idx = {d["name"]: d["index"] for d in it.get_tensor_details()}
            got[tag] = {n: it.get_tensor(idx[n]).astype(np.int32) for n in names}
        for tag, s in sessions.items():
            out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x})))
            shift = 128 if "uint8" in tag else 0
            got[tag] = {n: (out[n].astype(np.int32) - shift).transpose(0, 2, 3, 1) if layout[n]
                        else out[n].astype(np.int32) - shift for n in names}
        for a, b in (("XNNPACK", "builtin"), ("ORT int8 QDQ", "XNNPACK"), ("ORT uint8 (detzoo)", "XNNPACK"),
                     ("ORT uint8 (detzoo)", "builtin")):
            for n in names:
                d = np.abs(got[a][n] - got[b][n].reshape(got[a][n].shape))
                st = stats.setdefault((n, a, b), [0, 0, 0])
                st[0], st[1], st[2] = max(st[0], int(d.max())), st[1] + int((d > 0).sum()), st[2] + d.size
    return names, stats


def _print_layers(names, stats) -> None:
    pairs = sorted({(a, b) for _, a, b in stats}, key=lambda p: list(stats).index((names[0], *p)))
    print("| int8 tensor | " + " | ".join(f"{a} vs {b}" for a, b in pairs) + " |")
    print("|---" * (len(pairs) + 1) + "|")
    for n in names:
        cells = [f"{stats[n, a, b][0]} ({100 * stats[n, a, b][1] / stats[n, a, b][2]:.2f}%)" for a, b in pairs]
        print(f"| `{n[:36]}` | " + " | ".join(cells) + " |")
    print("\ncells: max |difference| in quantization steps (share of values that differ)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--layers", action="store_true", help="layer by layer on the int8 model instead")
    args = ap.parse_args(argv)

    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.manifest import machine_info
    from tests.fixtures.models import make_ssd_tflite

    images = args.images or demo_dir("eval")
    calib = [decode_image(p) for p in list_images(demo_dir("calib"))[:16]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="detzoo-bench-tflite-") as tmp:
        root = Path(tmp)
        if args.layers:
            _print_layers(*layers(make_ssd_tflite(root, precision="int8", calibration_images=calib), images,
                                  args.limit))
            mach = machine_info()
            print(f"CPU: {mach['cpu']}, class {mach['cpu_class']} ({', '.join(mach['flags'])}); images: {images}")
            return
        for precision in ("float", "int8", "uint8", "uint8-qat"):
            for regular in (False, True):
                src = make_ssd_tflite(root, precision=precision, use_regular_nms=regular, calibration_images=calib)
                for kind in ("tf2onnx", "exact NMS", "detzoo"):
                    if precision in ("float", "uint8-qat") and kind == "exact NMS":
                        continue  # no int8 tensors to relabel: the same model as detzoo's
                    r = measure(src, root / f"{src.stem}-{kind}", images, args.limit, kind)
                    rows.append((precision, "regular" if regular else "fast", kind, r))
    mach = machine_info()
    print("| source | NMS | conversion | matched >= 0.3 | unmatched | max score diff | max box diff | fidelity AP |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, nms, kind, r in rows:
        unit = " steps" if r["in_steps"] else ""
        print(f"| {precision} | {nms} | {kind} | {r['matched']} | {r['unmatched']} | {r['score']:.3g}{unit} | "
              f"{r['box']:.3g}{unit} | {r['fidelity']:.4f} |")
    print(f"\nCPU: {mach['cpu']}, class {mach['cpu_class']} ({', '.join(mach['flags'])}); images: {images}")


if __name__ == "__main__":
    main()
