"""``detzoo inspect``: what detzoo sees in a model before it converts anything."""

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


def _ops(src, graph) -> Counter:
    if src.format == ModelFormat.FROZEN_GRAPH:
        ops = [n.op for n in graph.node] + [n.op for f in graph.library.function for n in f.node_def]
    elif src.format == ModelFormat.SAVED_MODEL:
        meta, _ = graph
        ops = [n.op for n in meta.graph_def.node] + [n.op for f in meta.graph_def.library.function
                                                     for n in f.node_def]
    else:
        ops = [op["op_name"] for op in graph._get_ops_details()]
    return Counter(ops)


def inspect_model(path, input_name=None, output_names=None) -> dict:
    """A report of format, IO, op census, control flow, NMS and what detzoo would refuse."""
    with open_source(path) as src:
        refusals = []
        try:
            graph = load_model_graph(src)
        except UnsafeModelError as e:
            refusals.append(str(e))
            graph = load_model_graph(src, allow_unsafe_ops=True)
        ops = _ops(src, graph)
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
            "num_classes": io.get("num_classes") if io else None,
            "refusals": refusals,
        }
