"""Partial evaluation for the batch-1 pass: what a graph computes from constants and static dimensions.

Owns ``Known`` (values known at graph-build time: constants and partly known shape vectors),
``static_shapes`` (ONNX shape inference read back as dims) and ``initial_known``. Must not touch
the graph: it only reads it; batch1_inline.py and batch1_cleanup.py do the rewriting.
"""

from __future__ import annotations

import numpy as np

from detzoo.onnxgraph import walk_graphs

# Ops whose outputs the partial evaluator computes from known inputs (shape arithmetic only).
_ELEMENTWISE = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Less": np.less, "Greater": np.greater,
    "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal, "Equal": np.equal,
    "And": np.logical_and, "Or": np.logical_or, "Min": np.minimum, "Max": np.maximum,
}


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


class Known:
    """Values known at graph-build time: constants, and partly known shape vectors.

    Partly known vectors are ``_Vec``; anything fully known is a numpy array. Unknown tensors are
    simply absent.
    """

    def __init__(self, shapes: dict[str, list], outer: "Known | None" = None):
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


def static_shapes(model) -> dict[str, list]:
    """Tensor name -> dims (int or None) from ONNX shape inference, main graph and Loop bodies."""
    import onnx

    shapes = {}
    for g in walk_graphs(onnx.shape_inference.infer_shapes(model).graph):
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        for init in g.initializer:
            shapes[init.name] = list(init.dims)
    return shapes


def initial_known(model, shapes) -> Known:
    """What the top-level graph computes from its small integer/float initializers and ``shapes``."""
    from onnx import TensorProto as T, numpy_helper

    small = (T.INT32, T.INT64, T.BOOL, T.DOUBLE, T.FLOAT)
    known = Known(shapes)
    for init in model.graph.initializer:
        if init.data_type in small and np.prod(init.dims) <= 64:
            known.values[init.name] = numpy_helper.to_array(init)
    known.run(model.graph.node)
    return known
