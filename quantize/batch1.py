"""Batch-1 pass: fix the batch to one and inline the ``map_fn`` loops it makes redundant.

tf2onnx turns the OD API's ``map_fn`` over the batch (preprocessing resize, postprocessing NMS)
into ONNX ``Loop`` nodes. For a batch of one they run exactly once, yet cost a subgraph
invocation, keep shapes dynamic (so nothing downstream constant-folds) and hide their bodies from
fp16 conversion and quantization (onnxconverter-common breaks Loop bodies; quantize_static skips
them). A loop is inlined only when a partial evaluation *proves* it runs exactly once for every
batch-1 input: its start condition must be true, and its body's continue condition false after
the first iteration, using nothing but constants and statically known dimensions. A loop whose
trip count depends on image content or size is left alone and reported.

Owns the pass's entry (``run``) and its report; the work is split by job: partial evaluation
(batch1_known.py), loop inlining (batch1_inline.py), dead nodes, folding and no-op Reshapes
(batch1_cleanup.py). Must not touch precision: every tensor keeps its type.
"""

from __future__ import annotations

from dataclasses import dataclass

from detzoo.errors import DetzooError
from detzoo.quantize.batch1_cleanup import drop_noop_reshapes, fold_known, remove_dead_nodes
from detzoo.quantize.batch1_inline import body_size, inline_loop, runs_exactly_once, taken_names
from detzoo.quantize.batch1_known import initial_known, static_shapes

MAX_ROUNDS = 8  # fold, then inline what the folding proved, at most this many times


@dataclass(frozen=True)
class LoopReport:
    """What happened to one top-level Loop."""

    node: str
    inlined: bool
    reason: str
    body_nodes: int

    def to_json(self) -> dict:
        return {"node": self.node, "inlined": self.inlined, "reason": self.reason, "body_nodes": self.body_nodes}


@dataclass(frozen=True)
class Batch1Report:
    loops: list
    folded: int
    reshapes_dropped: int

    @property
    def loops_left(self) -> list:
        return [r for r in self.loops if not r.inlined]

    def to_json(self) -> dict:
        return {"batch": 1, "loops": [r.to_json() for r in self.loops], "shape_nodes_folded": self.folded,
                "noop_reshapes_dropped": self.reshapes_dropped}


def _fix_batch(g) -> None:
    """Batch 1 on the image input and on every output whose first dimension is free."""
    if len(g.input) != 1:
        raise DetzooError(f"expected one image input, got {len(g.input)} inputs")
    dims = g.input[0].type.tensor_type.shape.dim
    if not dims:
        raise DetzooError(f"input {g.input[0].name} has no known rank; expected [batch, height, width, 3]")
    if dims[0].HasField("dim_value") and dims[0].dim_value not in (0, 1):
        raise DetzooError(f"input {g.input[0].name} has batch {dims[0].dim_value}; "
                          "expected 1 or a free batch dimension")
    dims[0].ClearField("dim_param")
    dims[0].dim_value = 1
    for o in g.output:
        d = o.type.tensor_type.shape.dim
        if d and not d[0].HasField("dim_value"):
            d[0].ClearField("dim_param")
            d[0].dim_value = 1


def run(model) -> tuple[object, Batch1Report]:
    """Return a copy of ``model`` with batch 1 on its image input and provably single-pass Loops inlined.

    Shape arithmetic that batch 1 makes constant is folded on the way, which lets shape
    inference see through the inlined preprocessing, which in turn proves the next Loop.
    Raises DetzooError when the input's batch dimension is fixed to something other than one.
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    _fix_batch(g)
    reports: dict[str, LoopReport] = {}
    total_folded = 0
    for _ in range(MAX_ROUNDS):
        del g.value_info[:]  # stale shapes that still say 'batch'
        shapes = static_shapes(model)
        known = initial_known(model, shapes)
        folded = fold_known(model, known)
        total_folded += folded
        taken = taken_names(g)
        inlined, new_nodes = 0, []
        for n in g.node:
            if n.op_type != "Loop":
                new_nodes.append(n)
                continue
            once, reason = runs_exactly_once(n, known, shapes)
            reports[n.name] = LoopReport(n.name, once, reason, body_size(n))
            if once:
                new_nodes.extend(inline_loop(g, n, taken))
                inlined += 1
            else:
                new_nodes.append(n)
        del g.node[:]
        g.node.extend(new_nodes)
        remove_dead_nodes(model)
        if not folded and not inlined:
            break
    del g.value_info[:]
    dropped = drop_noop_reshapes(model)
    remove_dead_nodes(model)
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model, Batch1Report(list(reports.values()), total_folded, dropped)


