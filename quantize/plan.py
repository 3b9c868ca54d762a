"""Detection-aware precision plan: which nodes may run in reduced precision, and why the rest may not.

A detector is a network (backbone and heads: convolutions and what lies between them) wrapped in
pre- and postprocessing that reduced precision breaks: the resize/normalize of the uint8 image,
anchors, box decoding (``Exp`` of encodings times anchor sizes), score conversion, NMS and TopK
(ONNX Runtime's CPU kernels are float-only, and their thresholds compare exact scores).

The regions come from the graph's structure, not from node names, so they hold for any
converter's naming: the *network* is every node that lies on a path between two compute nodes
(Conv, ConvTranspose, MatMul, Gemm), plus those compute nodes; *preprocessing* feeds the first of
them from the image; *decoding* and *selection* (NMS, TopK, NonZero and everything after them)
consume the last ones; *constants* (anchors) do not depend on the image at all.

Owns the plan (``run``: regions, and the network nodes later passes return to float with their
reason) and node naming (``ensure_node_names``). Must not touch the graph beyond names: the
precision passes (fp16.py, int8.py) apply the plan.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from detzoo.onnxgraph import consumers as consumer_map, producers, subgraphs

COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
SELECTION_OPS = {"NonMaxSuppression", "TopK", "NonZero", "RoiAlign"}
CONTROL_OPS = {"Loop", "If", "Scan"}
FLOAT_TYPES = {1, 10, 11, 16}  # float, float16, double, bfloat16
# Ops of the network that ORT runs as fused int8 kernels in QDQ form (Clip/Relu fold into the
# preceding QLinearConv; Add becomes QLinearAdd); data movement between them stays quantized.
INT8_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Clip", "Relu", "Add", "Mul", "Concat", "Reshape",
            "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "AveragePool", "GlobalAveragePool", "Resize",
            "Sigmoid", "LeakyRelu", "Split", "Pad"}


class Region(str, enum.Enum):
    PREPROCESSING = "preprocessing"
    NETWORK = "network"
    BOX_DECODING = "box_decoding"
    SCORE_CONVERSION = "score_conversion"
    SELECTION = "selection"
    CONSTANTS = "constants"
    SHAPE = "shape_arithmetic"
    CONTROL_FLOW = "control_flow"


WHY_FLOAT = {
    Region.PREPROCESSING: "resize/normalize of the uint8 image: exact pixel arithmetic, no weights to shrink",
    Region.BOX_DECODING: "box decoding (Exp of encodings times anchor sizes): small errors move every box",
    Region.SCORE_CONVERSION: "score conversion feeding NMS: thresholds compare exact scores",
    Region.SELECTION: "NMS/TopK/NonZero and after: float-only kernels, exact score ordering",
    Region.CONSTANTS: "anchors and other constants: folded once at load, no runtime cost",
    Region.SHAPE: "integer shape/index arithmetic: not floating point",
    Region.CONTROL_FLOW: "Loop/If subgraph that could not be inlined: its body stays float",
}


@dataclass
class PrecisionPlan:
    """Region of every node, and which network nodes are returned to float (with the reason)."""

    regions: dict  # node name -> Region
    op_types: dict  # node name -> op type
    excluded: dict = field(default_factory=dict)  # network node name -> why it stays float

    def nodes(self, region: Region) -> list[str]:
        return [n for n, r in self.regions.items() if r == region]

    @property
    def network(self) -> list[str]:
        return self.nodes(Region.NETWORK)

    def reduced(self, op_types: set[str] | None = None) -> list[str]:
        """Network nodes to run in reduced precision (optionally only these op types)."""
        return [n for n in self.network if n not in self.excluded
                and (op_types is None or self.op_types[n] in op_types)]

    def copy(self) -> "PrecisionPlan":
        return PrecisionPlan(dict(self.regions), dict(self.op_types), dict(self.excluded))

    def exclude(self, node: str, why: str) -> None:
        if self.regions.get(node) != Region.NETWORK:
            raise KeyError(node)
        self.excluded[node] = why

    def to_json(self) -> dict:
        summary = {}
        for region in Region:
            names = self.nodes(region)
            if not names:
                continue
            ops = Counter(self.op_types[n] for n in names)
            entry = {"nodes": len(names), "ops": dict(ops.most_common())}
            if region == Region.NETWORK:
                entry["precision"] = "reduced (int8/fp16)"
                entry["why"] = "backbone and heads: convolutions carry the compute and the weights"
            else:
                entry["precision"] = "float32"
                entry["why"] = WHY_FLOAT[region]
            summary[region.value] = entry
        return {"regions": summary, "excluded": dict(self.excluded)}

    def summary(self) -> str:
        parts = []
        for region, entry in self.to_json()["regions"].items():
            parts.append(f"{region} {entry['nodes']} nodes -> {entry['precision'].split(' ')[0]}")
        return "; ".join(parts)


def subgraph_inputs(node) -> set[str]:
    """Outer-scope names a Loop/If/Scan body reads (its implicit inputs)."""
    names: set[str] = set()

    def walk(g, defined: set[str]):
        defined = defined | {i.name for i in g.input} | {i.name for i in g.initializer}
        for n in g.node:
            names.update(i for i in n.input if i and i not in defined)
            for sub in subgraphs(n):
                walk(sub, defined)
            defined = defined | set(n.output)

    for sub in subgraphs(node):
        walk(sub, set())
    return names


def node_inputs(node) -> list[str]:
    """Explicit inputs plus, for control flow, the outer-scope names its bodies read."""
    return [i for i in node.input if i] + sorted(subgraph_inputs(node) - set(node.input))


def readers(graph) -> dict:
    """Value name -> the nodes of ``graph`` that read it: ``onnxgraph.consumers``, plus each
    Loop/If/Scan for the outer-scope names its bodies read."""
    out = consumer_map(graph)
    for n in graph.node:
        for t in sorted(subgraph_inputs(n) - set(n.input)):
            out.setdefault(t, []).append(n)
    return out


def _float_outputs(model) -> dict[str, bool]:
    """Tensor name -> is floating point (from shape inference and initializers)."""
    import onnx

    g = onnx.shape_inference.infer_shapes(model).graph
    out = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        out[vi.name] = vi.type.tensor_type.elem_type in FLOAT_TYPES
    for init in g.initializer:
        out[init.name] = init.data_type in FLOAT_TYPES
    return out


def run(model) -> PrecisionPlan:
    """Classify every top-level node of ``model`` into a Region."""
    g = model.graph
    nodes = list(g.node)  # holds each node's message object, so id() names it for this whole call
    names = [n.name or f"#{i}:{n.op_type}" for i, n in enumerate(nodes)]
    at = {id(n): i for i, n in enumerate(nodes)}
    producer = {t: at[id(n)] for t, n in producers(g).items()}
    consumers = {t: sorted({at[id(n)] for n in ns}) for t, ns in readers(g).items()}
    is_float = _float_outputs(model)

    def reach(start: set[int], neighbours, stop: set[int]) -> set[int]:
        """Nodes reachable from ``start`` through ``neighbours``, not walking past ``stop``."""
        seen, stack = set(), list(start)
        while stack:
            i = stack.pop()
            if i in seen or (i in stop and i not in start):
                continue
            seen.add(i)
            stack.extend(neighbours(i))
        return seen

    def forward(start: set[int], stop: set[int] = frozenset()) -> set[int]:
        return reach(start, lambda i: [c for o in nodes[i].output for c in consumers.get(o, [])], stop)

    def backward(start: set[int], stop: set[int] = frozenset()) -> set[int]:
        return reach(start, lambda i: [producer[t] for t in node_inputs(nodes[i]) if t in producer], stop)

    from_input = forward({c for inp in g.input for c in consumers.get(inp.name, [])})
    compute = {i for i, n in enumerate(nodes) if n.op_type in COMPUTE_OPS and i in from_input}
    selection = forward({i for i, n in enumerate(nodes) if n.op_type in SELECTION_OPS})
    # Paths between compute nodes count as network only when they avoid NMS and control flow: a
    # two-stage detector's proposal decoding, NMS and crops sit between its two stages.
    barrier = selection | {i for i, n in enumerate(nodes) if n.op_type in CONTROL_OPS}
    after_compute = forward(compute, barrier)
    before_compute = backward(compute, barrier)
    nms = [n for n in nodes if n.op_type == "NonMaxSuppression"]
    boxes_side = backward({producer[n.input[0]] for n in nms if n.input[0] in producer})
    scores_side = backward({producer[n.input[1]] for n in nms if len(n.input) > 1 and n.input[1] in producer})
    exp_side = forward({i for i, n in enumerate(nodes) if n.op_type == "Exp"}, barrier)
    after_any_compute = forward(compute)

    regions, op_types = {}, {}
    for i, n in enumerate(nodes):
        op_types[names[i]] = n.op_type
        floaty = any(is_float.get(o, True) for o in n.output if o)
        if n.op_type in CONTROL_OPS:
            r = Region.CONTROL_FLOW
        elif i not in from_input:
            r = Region.CONSTANTS
        elif floaty and (i in compute or (i in after_compute and i in before_compute)):
            r = Region.NETWORK
        elif i in selection:
            r = Region.SELECTION
        elif not floaty:
            r = Region.SHAPE
        elif i not in after_any_compute:
            r = Region.PREPROCESSING
        elif i in exp_side or (i in boxes_side and i not in scores_side):
            r = Region.BOX_DECODING
        else:
            r = Region.SCORE_CONVERSION
        regions[names[i]] = r
    return PrecisionPlan(regions, op_types)




def ensure_node_names(model) -> int:
    """Give unnamed nodes stable names (quantization and plans refer to nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    named = 0
    for i, n in enumerate(model.graph.node):
        if not n.name:
            base, k = f"{n.op_type}_{i}", 0
            name = base
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            n.name = name
            taken.add(name)
            named += 1
    return named
