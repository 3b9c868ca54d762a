"""``README.md`` model card of a zoo entry, in the zoo's style, from the manifest and report."""

from __future__ import annotations

from detzoo.manifest import Manifest
from detzoo.source import OUTPUT_ROLES

OUTPUT_DOC = {
    "num_detections": ("float32", "[1]", "number of valid detections N (the rest is padding)"),
    "detection_boxes": ("float32", "[1, max, 4]", "boxes as normalized [ymin, xmin, ymax, xmax]"),
    "detection_scores": ("float32", "[1, max]", "scores, descending"),
    "detection_classes": ("float32", "[1, max]", "class ids"),
}


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape) + "]"


def render_card(m: Manifest, report: dict) -> str:
    from detzoo.verify.report import coco_table, summary_table

    io = m.io
    ref = report["mode"] == "reference"
    n = report["data"]["evaluated"]
    fp32 = m.variants.get("fp32")
    onnx_outputs = (fp32.settings.get("onnx_outputs") if fp32 else None) or io.output_names
    onnx_input = (fp32.settings.get("onnx_input") if fp32 else None) or io.input.name
    classes = "class ids as in the source"
    if io.class_offset:
        classes += f" (raw ids + {io.class_offset} = dataset category ids)"
    if io.label_map:
        classes += "; labels: " + ", ".join(f"{k} = {v}" for k, v in sorted(io.label_map.items()))
    out = [f"# {m.name}", "",
           f"ONNX conversions of a TensorFlow detection model ({m.source['format'].replace('_', ' ')}, "
           f"`{m.source['path'].rsplit('/', 1)[-1]}`, sha256 `{m.source['sha256'][:16]}...`), made and verified by "
           "detzoo. Every artifact keeps the zoo contract: one uint8 image in, the four detection outputs out, "
           "in the order below.", "",
           "## Input", "",
           f"- name `{onnx_input}`, {io.input.dtype}, shape {_shape(io.input.shape)} (NHWC, batch 1)",
           f"- colour order {io.colour_order}, pixel values 0-255",
           f"- preprocessing by the caller: {io.preprocessing}", "",
           "## Outputs, in this order", "",
           "| # | name | dtype | shape | meaning |", "|---|---|---|---|---|"]
    for i, (role, name) in enumerate(zip(OUTPUT_ROLES, onnx_outputs)):
        dt, shape, meaning = OUTPUT_DOC[role]
        if role == "detection_classes":
            meaning = classes
        out.append(f"| {i} | `{name}` | {dt} | {shape} | {meaning} |")
    out += ["", "## Artifacts", "", "| file | precision | size MB | sha256 | opset |", "|---|---|---|---|---|"]
    for v in m.variants.values():
        out.append(f"| `{v.file}` | {v.precision} | {v.size / 1e6:.2f} | `{v.sha256[:16]}...` | {v.opset or ''} |")
    out += ["", "## Metrics", ""]
    if ref:
        out += [f"Reference mode: based on {n} images (`{report['data']['images_dir'].rsplit('/', 1)[-1]}`), "
                f"without annotations. The source model's detections scoring >= {report['reference_threshold']} "
                "are the ground truth; the numbers say how faithfully each artifact reproduces the source "
                "(fidelity AP), not accuracy on COCO.", ""]
    out += summary_table(report) + [""]
    for name, mod in report["models"].items():
        what = "the source model" if name == "source" else f"`{mod['file']}`"
        basis = (f"Based on {n} images from COCO" if not ref else f"Based on {n} reference images")
        out += [f"### {mod['framework']}, {mod['precision']} ({name})", "",
                f"{basis} with {what} in {mod['precision']} precision.", ""]
        out += coco_table(mod["coco"]["stats"]) + [""]
    lat = report.get("latency")
    if lat:
        mach = report["machine"]
        out += ["## Latency", "",
                f"Batch 1, {lat['threads']} intra-op thread(s), {lat['runs']} timed runs after {lat['warmup']} "
                f"warm-up runs, on {mach.get('cpu')} ({', '.join(mach.get('flags', []))}).", "",
                "| model | p50 ms | p90 ms | p99 ms | images/s | speed-up vs source |", "|---|---|---|---|---|---|"]
        for name, mod in report["models"].items():
            t = mod.get("latency")
            if t:
                su = mod.get("speedup")
                out.append(f"| {name} | {t['p50_ms']:.1f} | {t['p90_ms']:.1f} | {t['p99_ms']:.1f} | "
                           f"{t['throughput_ips']:.1f} | {'' if su is None else f'{su:.2f}x'} |")
        out.append("")
    example = next(iter(m.variants.values())).file if m.variants else "model.onnx"
    resize = ""
    if io.resize:
        resize = (f"image = image.resize(({io.resize[1]}, {io.resize[0]}), Image.BILINEAR)  "
                  "# the model takes a fixed size\n")
    feed = "np.asarray(image, dtype=np.uint8)[None]"
    if io.input.dtype.startswith("float"):
        feed = f"(np.asarray(image, dtype=np.float32)[None] * {io.scale:g} + {io.offset:g}).astype(np.float32)"
    out += ["## Run it with onnxruntime", "", "```python", "import numpy as np", "import onnxruntime as ort",
            "from PIL import Image", "",
            f'sess = ort.InferenceSession("{example}", providers=["CPUExecutionProvider"])',
            'image = Image.open("image.jpg").convert("RGB")',
            resize.rstrip("\n"),
            f"num, boxes, scores, classes = sess.run(None, {{sess.get_inputs()[0].name: {feed}}})",
            "n = int(num[0])",
            "h, w = image.height, image.width",
            "for (ymin, xmin, ymax, xmax), s, c in zip(boxes[0][:n], scores[0][:n], classes[0][:n]):",
            f"    print(int(c) + {io.class_offset}, float(s), xmin * w, ymin * h, xmax * w, ymax * h)",
            "```", "",
            "Any artifact above runs the same way; replace the file name.", "",
            f"Tool versions: {', '.join(f'{k} {v}' for k, v in report.get('tool_versions', {}).items())}.", ""]
    return "\n".join(line for line in out if line is not None)
