"""Graph pass: fix the batch to one and inline the ``map_fn`` loops it makes redundant.

tf2onnx turns the OD API's ``map_fn`` over the batch (preprocessing resize, postprocessing NMS)
into ONNX ``Loop`` nodes. For a batch of one they run exactly once, yet cost a subgraph
invocation, keep shapes dynamic (so nothing downstream constant-folds) and hide their bodies from
fp16 conversion and quantization (onnxconverter-common breaks Loop bodies; quantize_static skips
them). A loop is inlined only when a partial evaluation *proves* it runs exactly once for every
batch-1 input: its start condition must be true, and its body's continue condition false after
the first iteration, using nothing but constants and statically known dimensions. A loop whose
trip count depends on image content or size is left alone and reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detzoo.errors import DetzooError

# Ops whose outputs the partial evaluator computes from known inputs (shape arithmetic only).
_ELEMENTWISE = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Less": np.less, "Greater": np.greater,
    "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal, "Equal": np.equal,
    "And": np.logical_and, "Or": np.logical_or, "Min": np.minimum, "Max": np.maximum,
}


@dataclass(frozen=True)
class LoopReport:
    """What happened to one top-level Loop."""

    node: str
    inlined: bool
    reason: str
    body_nodes: int

    def to_json(self) -> dict:
        return {"node": self.node, "inlined": self.inlined, "reason": self.reason, "body_nodes": self.body_nodes}


def _dtype(elem_type: int):
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


class _Vec(list):
    """A partly known 1-D integer vector (a shape): ints, or None for an unknown dimension."""

    def __init__(self, items, dtype=np.int64):
        super().__init__(items)
        self.dtype = np.dtype(dtype)

    def array(self):
        return np.array(self, dtype=self.dtype) if all(d is not None for d in self) else None


class _Known:
    """Values known at graph-build time: constants, and partly known shape vectors.

    Partly known vectors are ``_Vec``; anything fully known is a numpy array. Unknown tensors are
    simply absent.
    """

    def __init__(self, shapes: dict[str, list], outer: "_Known | None" = None):
        self.values: dict[str, object] = {}
        self.shapes = shapes
        self.outer = outer

    def get(self, name):
        if name in self.values:
            return self.values[name]
        return self.outer.get(name) if self.outer is not None else None

    def shape_of(self, name):
        if name in self.shapes:
            return self.shapes[name]
        return self.outer.shape_of(name) if self.outer is not None else None

    def full(self, name):
        v = self.get(name)
        return v.array() if isinstance(v, _Vec) else v

    def run(self, nodes) -> None:
        for n in nodes:
            try:
                out = self._eval(n)
            except Exception:  # an op the evaluator cannot follow: its outputs stay unknown
                out = None
            if out is not None and n.output:
                self.values[n.output[0]] = out

    def _eval(self, n):
        import onnx
        from onnx import numpy_helper

        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        op = n.op_type
        if op == "Constant":
            return numpy_helper.to_array(attrs["value"]) if "value" in attrs else None
        if op == "Shape":
            shp = self.shape_of(n.input[0])
            if shp is None:
                return None
            start, end = attrs.get("start", 0), attrs.get("end", None)
            return _Vec(list(shp)[start:end])
        if op in ("Identity",):
            return self.get(n.input[0])
        v = self.get(n.input[0]) if n.input else None
        if isinstance(v, _Vec):  # partly known shape vector: only index-style ops keep it
            if op == "Cast":
                return _Vec(v, _dtype(attrs["to"]))
            if op == "Slice":
                starts, ends = self.full(n.input[1]), self.full(n.input[2])
                steps = self.full(n.input[4]) if len(n.input) > 4 and n.input[4] else None
                if starts is None or ends is None or (steps is not None and int(steps[0]) != 1):
                    return None
                s, e = int(starts[0]), int(ends[0])
                return _Vec(v[s:e], v.dtype)
            if op == "Gather":
                idx = self.full(n.input[1])
                if idx is None:
                    return None
                picked = _Vec([v[int(i)] for i in np.atleast_1d(idx)], v.dtype)
                if np.ndim(idx) == 0:
                    return None if picked[0] is None else np.array(picked[0], dtype=v.dtype)
                return picked
            if v.array() is None:
                return None
        inputs = [self.full(i) if i else None for i in n.input]
        if any(x is None for x in inputs[:1]) or any(x is None for x, i in zip(inputs, n.input) if i):
            return None
        if op == "Cast":
            return inputs[0].astype(_dtype(attrs["to"]))
        if op == "Squeeze":
            axes = tuple(int(a) for a in inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
            return np.squeeze(inputs[0], axis=axes)
        if op == "Unsqueeze":
            return np.expand_dims(inputs[0], tuple(int(a) for a in inputs[1]))
        if op == "Concat":
            return np.concatenate([np.atleast_1d(x) for x in inputs], axis=attrs.get("axis", 0))
        if op == "Not":
            return np.logical_not(inputs[0])
        if op in _ELEMENTWISE:
            return np.asarray(_ELEMENTWISE[op](inputs[0], inputs[1]))
        return None


def _static_shapes(model) -> dict[str, list]:
    """Tensor name -> dims (int or None) from ONNX shape inference, main graph and Loop bodies."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}

    def collect(g):
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        for init in g.initializer:
            shapes[init.name] = list(init.dims)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)

    collect(inferred.graph)
    return shapes


def _initial_known(model, shapes) -> _Known:
    from onnx import numpy_helper

    known = _Known(shapes)
    for init in model.graph.initializer:
        if init.data_type in (6, 7, 9, 11, 1) and np.prod(init.dims) <= 64:
            known.values[init.name] = numpy_helper.to_array(init)
    known.run(model.graph.node)
    return known


def _runs_exactly_once(loop, known: _Known, shapes) -> tuple[bool, str]:
    """Prove the loop's trip count is one from constants and static dimensions."""
    from onnx import numpy_helper

    m_name, cond_name = loop.input[0], loop.input[1]
    body = next(a.g for a in loop.attribute if a.name == "body")
    if cond_name:
        start = known.full(cond_name)
        if start is None:
            return False, "its start condition depends on image content or an unknown dimension"
        if not bool(np.asarray(start).reshape(-1)[0]):
            return False, "its start condition is false (it never runs)"
    if m_name:
        m = known.full(m_name)
        if m is None:
            return False, "its maximum trip count is not a constant"
        if int(np.asarray(m).reshape(-1)[0]) < 1:
            return False, "its maximum trip count is below one"
        if int(np.asarray(m).reshape(-1)[0]) == 1:
            return True, "maximum trip count is 1"
    if not cond_name:
        return False, "it has no condition and a trip count other than one"
    inner = _Known(shapes, outer=known)
    for init in body.initializer:
        inner.values[init.name] = numpy_helper.to_array(init)
    inner.values[body.input[0].name] = np.array(0, dtype=np.int64)
    inner.values[body.input[1].name] = np.array(True)
    for vi, init_name in zip(body.input[2:], loop.input[2:]):
        val = known.full(init_name) if init_name else None
        if val is not None:
            inner.values[vi.name] = val
    inner.run(body.node)
    after = inner.full(body.output[0].name)
    if after is None:
        return False, "its continue condition depends on image content or an unknown dimension"
    if bool(np.asarray(after).reshape(-1)[0]):
        return False, "its continue condition stays true after the first iteration"
    return True, "start condition true, continue condition false after one iteration (batch of one)"


def _unique(name: str, taken: set[str]) -> str:
    new, k = name, 1
    while new in taken:
        new, k = f"{name}__b1_{k}", k + 1
    taken.add(new)
    return new


def _rename_graph_inputs(g, mapping: dict[str, str]) -> None:
    """Rename references in ``g`` and in its nested subgraphs (outer-scope references)."""
    import onnx

    for n in g.node:
        for i, name in enumerate(n.input):
            if name in mapping:
                n.input[i] = mapping[name]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename_graph_inputs(a.g, mapping)


def _inline(graph, loop, taken: set[str]) -> list:
    """Nodes that compute one iteration of ``loop`` and produce its outputs under their names."""
    from onnx import helper, numpy_helper

    from detzoo.onnxgraph import GRAPH

    body = next(a.g for a in loop.attribute if a.name == "body")
    tag = loop.name or "loop"
    mapping: dict[str, str] = {}
    new_nodes = []
    iter_name = _unique(f"{tag}/iteration0", taken)
    cond_name = _unique(f"{tag}/cond_true", taken)
    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), iter_name))
    graph.initializer.append(numpy_helper.from_array(np.array(True), cond_name))
    mapping[body.input[0].name] = iter_name
    mapping[body.input[1].name] = cond_name
    for vi, init_name in zip(body.input[2:], loop.input[2:]):
        mapping[vi.name] = init_name
    for init in body.initializer:
        new = _unique(init.name, taken)
        mapping[init.name] = new
        copy = type(init)()
        copy.CopyFrom(init)
        copy.name = new
        graph.initializer.append(copy)
    for n in body.node:
        for o in n.output:
            if o:
                mapping[o] = _unique(o, taken)
    for n in body.node:
        c = type(n)()
        c.CopyFrom(n)
        c.input[:] = [mapping.get(i, i) for i in n.input]
        c.output[:] = [mapping.get(o, o) for o in n.output]
        for a in c.attribute:
            if a.type == GRAPH:  # a nested subgraph refers to the body's names from outer scope
                _rename_graph_inputs(a.g, mapping)
        new_nodes.append(c)
    n_carried = len(loop.input) - 2
    body_out = [mapping.get(o.name, o.name) for o in body.output]
    for k, out in enumerate(loop.output):
        if not out:
            continue
        src = body_out[1 + k]
        if k < n_carried:
            new_nodes.append(helper.make_node("Identity", [src], [out], name=_unique(f"{tag}/final_{k}", taken)))
        else:
            axes = _unique(f"{tag}/stack_axes_{k}", taken)
            graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), axes))
            new_nodes.append(helper.make_node("Unsqueeze", [src, axes], [out], name=_unique(f"{tag}/stack_{k}", taken)))
    return new_nodes


def remove_dead_nodes(model) -> int:
    """Drop nodes (and initializers) no graph output depends on; returns how many nodes went."""
    import onnx

    g = model.graph

    def used_in_subgraphs(n) -> set[str]:
        names = set()
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                for m in a.g.node:
                    names.update(m.input)
                    names.update(used_in_subgraphs(m))
        return names

    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
            needed.update(used_in_subgraphs(n))
    removed = len(g.node) - len(keep)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vis)
    return removed


def _fold_known(model, known: _Known) -> int:
    """Replace nodes whose outputs are fully known (shape arithmetic) by initializers."""
    from onnx import numpy_helper

    g = model.graph
    outputs = {o.name for o in g.output}
    keep, folded = [], 0
    for n in g.node:
        vals = [known.values.get(o) for o in n.output]
        if (n.op_type not in ("Loop", "If", "Scan") and len(n.output) == 1 and n.output[0] not in outputs
                and isinstance(vals[0], (np.ndarray, np.generic)) and np.size(vals[0]) <= 1024):
            g.initializer.append(numpy_helper.from_array(np.asarray(vals[0]), n.output[0]))
            folded += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return folded


def _drop_noop_reshapes(model) -> int:
    """Bypass Reshapes whose static input and output shapes are equal.

    tf2onnx wraps the 1x1 feature maps' BatchNormalization in such Reshapes, which keeps
    onnxruntime from folding the BatchNormalization into the convolution before it.
    """
    g = model.graph
    shapes = _static_shapes(model)
    outputs = {o.name for o in g.output}
    rename, keep = {}, []
    for n in g.node:
        if n.op_type == "Reshape":
            a, b = shapes.get(n.input[0]), shapes.get(n.output[0])
            if a is not None and a == b and None not in a and n.output[0] not in outputs:
                rename[n.output[0]] = rename.get(n.input[0], n.input[0])
                continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    _rename_graph_inputs(g, rename)
    return len(rename)


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


def specialize_batch1(model) -> tuple[object, Batch1Report]:
    """Return a copy of ``model`` with batch 1 on its image input and provably single-pass Loops inlined.

    Shape arithmetic that batch 1 makes constant is folded on the way, which lets shape
    inference see through the inlined preprocessing, which in turn proves the next Loop.
    Raises DetzooError when the input's batch dimension is fixed to something other than one.
    """
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
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

    reports: dict[str, LoopReport] = {}
    total_folded = 0
    for _ in range(8):
        del g.value_info[:]  # stale shapes that still say 'batch'
        shapes = _static_shapes(model)
        known = _initial_known(model, shapes)
        folded = _fold_known(model, known)
        total_folded += folded
        taken = set()

        def names(gr):
            taken.update(i.name for i in gr.initializer)
            taken.update(i.name for i in gr.input)
            for n in gr.node:
                taken.update(n.output)
                for a in n.attribute:
                    if a.type == onnx.AttributeProto.GRAPH:
                        names(a.g)
        names(g)
        inlined, new_nodes = 0, []
        for n in g.node:
            if n.op_type != "Loop":
                new_nodes.append(n)
                continue
            body = next(a.g for a in n.attribute if a.name == "body")
            once, reason = _runs_exactly_once(n, known, shapes)
            reports[n.name] = LoopReport(n.name, once, reason, len(body.node))
            if once:
                new_nodes.extend(_inline(g, n, taken))
                inlined += 1
            else:
                new_nodes.append(n)
        del g.node[:]
        g.node.extend(new_nodes)
        remove_dead_nodes(model)
        if not folded and not inlined:
            break
    del g.value_info[:]
    dropped = _drop_noop_reshapes(model)
    remove_dead_nodes(model)
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model, Batch1Report(list(reports.values()), total_folded, dropped)
