"""``README.md`` model card of a zoo entry, in the zoo's style, from the manifest and report.

Owns: README.md's text. Does not touch: measurement; it reads the manifest and a VerifyReport.
"""

from __future__ import annotations

from pathlib import Path

from detzoo.manifest import Manifest
from detzoo.source import OUTPUT_ROLES
from detzoo.verify.report import VerifyReport

OUTPUT_DOC = {
    "num_detections": ("float32", "[N]", "number of valid detections per image (the rest is padding)"),
    "detection_boxes": ("float32", "[N, max, 4]", "boxes as normalized [ymin, xmin, ymax, xmax]"),
    "detection_scores": ("float32", "[N, max]", "scores, descending"),
    "detection_classes": ("float32", "[N, max]", "class ids"),
}


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None or (isinstance(d, int) and d < 0) else str(d) for d in shape) + "]"


def _artifact_input(m: Manifest, folder) -> str:
    """The true input shape of the entry's artifacts, from the files themselves."""
    import onnx

    from detzoo.contract import value_dims

    shapes = {}
    for v in m.variants.values():
        if v.format != "onnx":
            continue
        try:
            dims = value_dims(onnx.load(str(Path(folder) / v.file), load_external_data=False).graph.input[0])
        except Exception:  # noqa: BLE001 - a card is still written without it
            continue
        shapes.setdefault(_shape(dims), []).append(v.name)
    return "; ".join(f"{s} ({', '.join(n)})" for s, n in shapes.items())


def render_card(m: Manifest, report: VerifyReport, folder=None) -> str:
    """``folder``: where the artifacts are, so the card states the input shapes the files really have."""
    from detzoo.verify.markdown import coco_table, summary_table

    io = m.io
    ref = report.reference
    n = report.data.evaluated
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
           f"- name `{onnx_input}`, {io.input.dtype}, NHWC, shape "
           + ((_artifact_input(m, folder) if folder is not None else "") or _shape(io.input.shape))
           + " (`?`: any size; the first dimension is the batch)",
           f"- colour order {io.colour_order}, pixel values 0-255",
           f"- preprocessing by the caller: {io.preprocessing}",
           *([f"- the source's own IO, which the graph now handles inside: `{m.source_io.input.name}` "
              f"{m.source_io.input.dtype} {_shape(m.source_io.input.shape)}; {m.source_io.preprocessing}; "
              f"class ids raw + {m.source_io.class_offset}"] if m.source_io and m.source_io.to_dict() != io.to_dict() else []),
           *([f"- fixed-size variants ({', '.join(fixed)}) are fed as the zoo feeds them: each image resized "
              "with OpenCV's INTER_LINEAR to their size first"] if (fixed := [n for n, v in m.variants.items()
                                                                          if v.io and (v.settings or {}).get("input_size")]) else []),
           f"- metrics below: {report.data.feed or 'each image as decoded'}", "",
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
        out += [f"Reference mode: based on {n} images (`{report.data.images_dir.rsplit('/', 1)[-1]}`), "
                f"without annotations. The source model's detections scoring >= {report.reference_threshold} "
                "are the ground truth; the numbers say how faithfully each artifact reproduces the source "
                "(fidelity AP), not accuracy on COCO.", ""]
    out += summary_table(report) + [""]
    for name, mod in report.models.items():
        what = "the source model" if name == "source" else f"`{mod.file}`"
        basis = (f"Based on {n} images from COCO" if not ref else f"Based on {n} reference images")
        out += [f"### {mod.framework}, {mod.precision} ({name})", "",
                f"{basis} with {what} in {mod.precision} precision.", ""]
        out += coco_table(mod.stats) + [""]
    lat = report.latency
    if lat:
        mach = report.machine
        out += ["## Latency", "",
                f"Batch {lat.batch}, {lat.threads} intra-op thread(s), {lat.runs} timed runs after {lat.warmup} "
                f"warm-up runs, on {mach.get('cpu')} ({', '.join(mach.get('flags', []))}).", "",
                "| model | p50 ms | p90 ms | p99 ms | images/s | speed-up vs source |", "|---|---|---|---|---|---|"]
        for name, mod in report.models.items():
            t, su = mod.latency, mod.speedup
            if t:
                out.append(f"| {name} | {t.p50_ms:.1f} | {t.p90_ms:.1f} | {t.p99_ms:.1f} | "
                           f"{t.throughput_ips:.1f} | {'' if su is None else f'{su:.2f}x'} |")
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
            f"num, boxes, scores, classes = sess.run(None, {{sess.get_inputs()[0].name: {feed}}})  # any batch N",
            "n = int(num[0])",
            "h, w = image.height, image.width",
            "for (ymin, xmin, ymax, xmax), s, c in zip(boxes[0][:n], scores[0][:n], classes[0][:n]):",
            f"    print(int(c) + {io.class_offset}, float(s), xmin * w, ymin * h, xmax * w, ymax * h)",
            "```", "",
            "Any artifact above runs the same way; replace the file name.", "",
            f"Tool versions: {', '.join(f'{k} {v}' for k, v in report.tool_versions.items())}.", ""]
    return "\n".join(line for line in out if line is not None)
