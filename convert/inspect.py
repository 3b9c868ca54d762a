"""``detzoo inspect``: what detzoo sees in a model before it converts anything.

Owns: the report of a model's format, IO, ops, control flow, NMS and detector family, and of an
ONNX file. Does
not touch: files (writes nothing), conversion.
"""

from __future__ import annotations

from collections import Counter

from detzoo.errors import DetzooError
from detzoo.safety import UnsafeModelError
from detzoo.source import ModelFormat, open_source
from detzoo.convert.iodetect import detect_io
from detzoo.convert.loading import load_model_graph

CONTROL_FLOW = {"While", "StatelessWhile", "Enter", "Exit", "LoopCond", "NextIteration", "Merge", "Switch",
                "If", "StatelessIf", "WHILE", "IF"}
TENSOR_ARRAY_PREFIX = "TensorArray"
NMS_OPS = {"NonMaxSuppression", "NonMaxSuppressionV2", "NonMaxSuppressionV3", "NonMaxSuppressionV4",
           "NonMaxSuppressionV5", "CombinedNonMaxSuppression", "TFLite_Detection_PostProcess",
           "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5"}


def _nodes(src, graph) -> list[tuple[str, str]]:
    """(op, name) of every node, functions included (a SavedModel's whole function library)."""
    if src.format == ModelFormat.FROZEN_GRAPH:
        g = graph
    elif src.format == ModelFormat.SAVED_MODEL:
        g = graph[0].graph_def
    else:
        return [(op["op_name"], "") for op in graph._get_ops_details()]
    return [(n.op, n.name) for n in g.node] + [(n.op, n.name) for f in g.library.function for n in f.node_def]


def family(ops: Counter, names=()) -> dict:
    """Which detector family the graph's structure shows, and the evidence: what the precision plan
    and the parity check will meet. ``names``: node names, for the OD API's second-stage scope,
    which TF2 Faster R-CNN needs (it crops proposals with matmuls, not CropAndResize)."""
    nms = {k: v for k, v in ops.items() if k in NMS_OPS}
    if ops.get("TFLite_Detection_PostProcess"):
        return {"name": "single-stage", "evidence": "TFLite_Detection_PostProcess (anchors decoded and NMS in one op)"}
    second = next((n for n in names if "SecondStage" in n), None)
    if ops.get("CropAndResize") or second:
        why = (f"CropAndResize x{ops['CropAndResize']}" if ops.get("CropAndResize")
               else f"second-stage scope ({second.split('/')[0]})")
        return {"name": "two-stage", "evidence": f"{why}: proposals cropped and classified again; NMS {nms}"}
    if nms:
        return {"name": "single-stage", "evidence": f"anchors scored once, then NMS {nms}"}
    if ops.get("TopKV2") and ops.get("MaxPool"):
        return {"name": "center-based", "evidence": "heatmap peaks (MaxPool) and TopKV2, no NMS"}
    return {"name": "unknown", "evidence": "no NMS, TFLite post-processing, crops or heatmap peaks found"}


def inspect_model(path, input_name=None, output_names=None) -> dict:
    """A report of format, IO, op census, control flow, NMS and what detzoo would refuse."""
    with open_source(path) as src:
        refusals = []
        try:
            graph = load_model_graph(src)
        except UnsafeModelError as e:
            refusals.append(str(e))
            graph = load_model_graph(src, allow_unsafe_ops=True)
        nodes = _nodes(src, graph)
        ops = Counter(op for op, _ in nodes)
        try:
            io = detect_io(src, input_name, output_names, graph=graph).to_dict()
        except DetzooError as e:
            io = None
            refusals.append(str(e))
        return {
            "source": src.describe(),
            "io": io,
            "op_count": sum(ops.values()),
            "op_census": dict(ops.most_common()),
            "control_flow": {k: v for k, v in ops.items() if k in CONTROL_FLOW},
            "tensor_arrays": {k: v for k, v in ops.items() if k.startswith(TENSOR_ARRAY_PREFIX)},
            "nms_ops": {k: v for k, v in ops.items() if k in NMS_OPS},
            "family": family(ops, (name for _, name in nodes)),
            "num_classes": io.get("num_classes") if io else None,
            "refusals": refusals,
        }


def inspect_onnx(path) -> dict:
    """An ONNX artifact: IO, op census, refusals, and for int8 whether it is exact on every CPU."""
    from pathlib import Path

    import onnx
    from google.protobuf.message import DecodeError

    from detzoo.fsutil import sha256_file
    from detzoo.onnxgraph import walk_nodes
    from detzoo.quantize.weights import saturation_report
    from detzoo.safety import scan_onnx

    path = Path(path)
    if not path.is_file():
        raise DetzooError(f"ONNX model not found: {path}")
    try:
        model = onnx.load_from_string(path.read_bytes())
    except (DecodeError, ValueError):
        raise DetzooError(f"{path.name} is not a readable ONNX model") from None
    refusals = []
    try:
        scan_onnx(model, f"ONNX model {path.name}")
    except UnsafeModelError as e:
        refusals.append(str(e))
    ops = Counter(n.op_type for n in walk_nodes(model.graph))

    def spec(vi):
        t = vi.type.tensor_type
        dims = ["?" if not d.HasField("dim_value") else d.dim_value for d in t.shape.dim]
        return {"name": vi.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
                if t.elem_type else "?", "shape": dims}

    int8 = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"} & set(ops)
    return {
        "source": {"format": "onnx", "path": str(path), "size": path.stat().st_size,
                   "sha256": sha256_file(path),
                   "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)},
        "inputs": [spec(i) for i in model.graph.input],
        "outputs": [spec(o) for o in model.graph.output],
        "op_count": sum(ops.values()),
        "op_census": dict(ops.most_common()),
        "control_flow": {k: v for k, v in ops.items() if k in ("Loop", "If", "Scan")},
        "nms_ops": {k: v for k, v in ops.items() if k == "NonMaxSuppression"},
        "int8": saturation_report(model) if int8 else None,
        "refusals": refusals,
    }
