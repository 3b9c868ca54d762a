"""Bilinear ``Resize`` nodes rewritten to compute TF's ``ResizeBilinear`` exactly.

tf2onnx turns TF's ``ResizeBilinear`` (the OD API's image resizers) into an ONNX ``Resize``
(linear, ``asymmetric``, or ``half_pixel`` for ``half_pixel_centers``). TF takes the source
coordinate as ``out * (float(in) / float(out))``, onnxruntime as ``out / (out / in)``: where the
factor is not exact (768 -> 160) the two round apart and resized pixels differ by up to 0.011.
``exact_tf_resize`` replaces each such Resize by nodes computing TF's formula (the approach of
``detzoo.contract.tf_resize_nodes``, there NHWC with static sizes; here NCHW, sizes read in the
graph), which matches TF bit for bit.

convert runs it on every conversion, before the contract wrapper (TFLite's reference kernel takes
the same formula; integer resizes are not float and stay). A constant output size gives constant
grids, so shapes stay as static as the Resize's were: quantize's batch-1 pass proves the OD API's
postprocessing Loop from them (BENCHMARKS.md, "TF's bilinear resize").

Owns: this rewrite. Does not touch: files, the contract wrapper, canonical order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from detzoo.onnxgraph import producers, subgraphs, walk_graphs

_MODES = {b"asymmetric": False, b"half_pixel": True}


def exact_tf_resize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every bilinear Resize over the last two axes of a 4-D float tensor computed
    with TF's formula instead; returns the model (changed in place) and how many were replaced.
    Resizes it cannot prove to be such (nearest, cubic, antialias, other axes, unknown types) stay."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types then come from what the model itself declares
        inferred = model
    types = {}  # value name -> (elem_type, dims: ints and None, or None when the rank is unknown)
    for g in walk_graphs(inferred.graph):
        for t in g.initializer:
            types[t.name] = (t.data_type, list(t.dims))
        for vi in [*g.input, *g.output, *g.value_info]:
            if vi.type.HasField("tensor_type"):
                tt = vi.type.tensor_type
                dims = ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                        if tt.HasField("shape") else None)
                types[vi.name] = (tt.elem_type, dims)
    names = _all_names(model.graph)
    dropped: set = set()
    count = _rewrite(model.graph, [], types, names, dropped)
    if count:  # the roi and empty scales the Resizes alone read
        used = {i for g in walk_graphs(model.graph) for n in g.node for i in n.input}
        used |= {o.name for g in walk_graphs(model.graph) for o in g.output}
        for g in walk_graphs(model.graph):
            inputs = {i.name for i in g.input}
            keep = [t for t in g.initializer if t.name not in dropped or t.name in used | inputs]
            if len(keep) != len(g.initializer):
                del g.initializer[:]
                g.initializer.extend(keep)
    return model, count


def _all_names(graph) -> set:
    names = set()
    for g in walk_graphs(graph):
        for vi in [*g.input, *g.output, *g.value_info]:
            names.add(vi.name)
        names.update(t.name for t in g.initializer)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
            names.add(n.name)
    return names


def _rewrite(graph, outer: list, types: dict, names: set, dropped: set) -> int:
    scope = [(producers(graph), {t.name: t for t in graph.initializer}, types)] + outer
    count = 0
    new_nodes = []
    for n in graph.node:
        for sub in subgraphs(n):
            count += _rewrite(sub, scope, types, names, dropped)
        plan = _plan(n, scope, types) if n.op_type == "Resize" and n.domain in ("", "ai.onnx") else None
        if plan is None:
            new_nodes.append(n)
            continue
        new_nodes.extend(_tf_nodes(n, *plan, names))
        dropped.update(n.input[1:])
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return count


def _already_exact(ins, outs, half_pixel: bool, scales=None) -> bool:
    """Whether onnxruntime's source coordinates (from ``scales`` where the Resize is given them, else
    out / in) equal TF's at every output index (static sizes only): then the Resize already computes
    TF's result (an x2 upsampling inside a network does), and stays, as fast as it is."""
    if any(not isinstance(v, int) or v <= 0 for v in [*ins, *outs]):
        return False
    for k, (n_in, n_out) in enumerate(zip(ins, outs)):
        grid = np.arange(n_out, dtype=np.float32)
        tf_scale = np.float32(n_in) / np.float32(n_out)
        ort_scale = scales[k] if scales is not None else np.float32(n_out) / np.float32(n_in)
        if half_pixel:
            tf = (grid + np.float32(0.5)) * tf_scale - np.float32(0.5)
            ort = (grid + np.float32(0.5)) / ort_scale - np.float32(0.5)
        else:
            tf, ort = grid * tf_scale, grid / ort_scale
        if not np.array_equal(tf, ort):
            return False
    return True


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _plan(node, scope, types):
    """(half_pixel, 'sizes' or 'scales', the NHWC source or None, the output height and width where
    constant, else None each) when ``node`` can be replaced, else None."""
    if _attr(node, "mode", b"nearest") != b"linear" or _attr(node, "antialias", 0):
        return None
    ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    if ctm not in _MODES:
        return None
    if _attr(node, "axes") is not None or _attr(node, "keep_aspect_ratio_policy", b"stretch") != b"stretch":
        return None
    if len(node.output) != 1 or _elem_type(node.input[0], scope) != TensorProto.FLOAT:
        return None
    x = node.input[0]
    sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    scales = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if sizes:
        entries = _symbolic(sizes, scope)
        if entries is None or len(entries) != 4:
            return None
        dims = [_canon(("dim", x, i), scope) for i in (0, 1)]
        static = types.get(x, (None, None))[1]
        for i, e in enumerate(entries[:2]):
            e = _canon(e, scope) if isinstance(e, tuple) else e
            if e is None or not (e == dims[i] or (static is not None and static[i] is not None and e == static[i])):
                return None
        outs = tuple(e if isinstance(e, int) else None for e in entries[2:])
        if static is not None and _already_exact(static[2:], outs, _MODES[ctm]):
            return None
        return _MODES[ctm], "sizes", _nhwc_source(x, scope), outs
    if scales:
        s = _const(scales, scope)
        if s is None or s.size != 4 or not np.all(s.astype(np.float32)[:2] == 1):
            return None
        static = types.get(x, (None, None))[1]
        if static is not None and len(static) == 4 and all(isinstance(v, int) for v in static[2:]):
            ins = static[2:]
            outs = [int(np.floor(np.float32(n) * np.float32(f))) for n, f in zip(ins, s.astype(np.float32)[2:])]
            if _already_exact(ins, outs, _MODES[ctm], [np.float32(f) for f in s.astype(np.float32)[2:]]):
                return None
        return _MODES[ctm], "scales", _nhwc_source(x, scope), (None, None)
    return None


_SAME_TYPE = {"Identity", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Gather", "Flatten", "Expand",
              "Concat", "Relu", "Pad", "Tile", "Neg", "Abs"}


def _elem_type(name, scope, depth=0):
    """The element type shape inference gave ``name``, else the one its producers imply."""
    t = scope[0][2].get(name, (0,))[0]
    if t or depth > 64:
        return t
    kind, p = _lookup(name, scope)
    if kind == "init":
        return p.data_type
    if kind != "node":
        return 0
    if p.op_type == "Cast":
        return _attr(p, "to")
    if p.op_type == "Constant" and _const(name, scope) is not None:
        return helper.np_dtype_to_tensor_dtype(_const(name, scope).dtype)
    if p.op_type in _SAME_TYPE or p.op_type in ("Add", "Sub", "Mul", "Div"):
        return _elem_type(p.input[0], scope, depth + 1)
    return 0


def _nhwc_source(x, scope):
    """The NHWC tensor ``x`` transposes (tf2onnx's NHWC -> NCHW before a Resize), else None."""
    kind, p = _lookup(x, scope)
    if kind == "node" and p.op_type == "Transpose" and list(_attr(p, "perm") or []) == [0, 3, 1, 2]:
        return p.input[0]
    return None


def _lookup(name, scope):
    for prods, inits, _ in scope:
        if name in inits:
            return "init", inits[name]
        if name in prods:
            return "node", prods[name]
    return None, None


def _const(name, scope):
    kind, obj = _lookup(name, scope)
    if kind == "init":
        return numpy_helper.to_array(obj)
    if kind == "node" and obj.op_type == "Constant":
        for a in obj.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name == "value_ints":
                return np.array(list(a.ints), np.int64)
            if a.name == "value_int":
                return np.array(a.i, np.int64)
    if kind == "node" and obj.op_type in ("Identity", "Cast"):
        v = _const(obj.input[0], scope)
        if v is not None and obj.op_type == "Cast":
            v = v.astype(helper.tensor_dtype_to_np_dtype(_attr(obj, "to")))
        return v
    return None


def _canon(entry, scope):
    """A ("dim", tensor, axis) entry followed back through Identity and Transpose to its source."""
    while isinstance(entry, tuple):
        _, t, i = entry
        kind, p = _lookup(t, scope)
        if kind != "node":
            return entry
        if p.op_type == "Identity":
            entry = ("dim", p.input[0], i)
        elif p.op_type == "Transpose" and _attr(p, "perm") is not None:
            entry = ("dim", p.input[0], list(_attr(p, "perm"))[i])
        else:
            return entry
    return entry


def _symbolic(name, scope, depth=0):
    """The entries of a 1-D int64 tensor as ints, ("dim", tensor, axis) or None (unknown); None when
    not even its length is known."""
    if depth > 32:
        return None
    c = _const(name, scope)
    if c is not None:
        return [int(v) for v in np.asarray(c).reshape(-1)] if np.asarray(c).dtype.kind in "iu" else None
    kind, p = _lookup(name, scope)
    if kind != "node":
        return None
    op = p.op_type
    if op == "Shape":
        start, end = _attr(p, "start", 0), _attr(p, "end")
        if start < 0 or (end is not None and end < 0):
            return None
        rank = _rank(p.input[0], scope)
        if rank is None:
            return None
        end = rank if end is None else min(end, rank)
        return [("dim", p.input[0], i) for i in range(start, end)]
    if op in ("Identity", "Cast"):
        if op == "Cast" and _attr(p, "to") not in (TensorProto.INT64, TensorProto.INT32):
            return None
        return _symbolic(p.input[0], scope, depth + 1)
    if op == "Concat":
        out = []
        for i in p.input:
            part = _symbolic(i, scope, depth + 1)
            if part is None:
                return None
            out += part
        return out
    if op == "Slice":
        data = _symbolic(p.input[0], scope, depth + 1)
        consts = [_const(i, scope) if i else None for i in p.input[1:]]
        if data is None or any(c is None for c, i in zip(consts, p.input[1:]) if i):
            return None
        starts, ends = consts[0], consts[1]
        axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.array([0])
        steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.array([1])
        if starts.size != 1 or list(axes.reshape(-1)) not in ([0], [-1]):
            return None
        return data[slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), int(steps.reshape(-1)[0]))]
    if op == "Gather":
        data = _symbolic(p.input[0], scope, depth + 1)
        idx = _const(p.input[1], scope)
        if data is None or idx is None or idx.ndim != 1:
            return None
        try:
            return [data[int(i)] for i in idx]
        except IndexError:
            return None
    dims = scope[0][2].get(name, (None, None))[1]  # any other 1-D tensor of known length: unknown entries
    return [None] * dims[0] if dims is not None and len(dims) == 1 and dims[0] is not None else None


def _rank(name, scope):
    dims = scope[0][2].get(name, (None, None))[1]
    return None if dims is None else len(dims)


def _tf_nodes(node, half_pixel: bool, by: str, nhwc: str | None, outs: tuple, names: set) -> list:
    """Nodes computing TF's bilinear resize of NCHW ``node.input[0]`` into ``node.output[0]``; from
    ``nhwc`` instead where that tensor is ``node.input[0]`` before tf2onnx's Transpose to NCHW.
    Where an output size is constant (``outs``), its grid is a constant too, so shape inference
    keeps the static size the Resize had (quantize's batch-1 pass proves its Loops from it)."""
    base = (node.name or node.output[0]) + "/tf_exact/"
    P = base
    k = 1
    while any(n.startswith(P) for n in names):  # a prefix nothing in the model uses yet
        k += 1
        P = f"{base[:-1]}_{k}/"
    made = []

    def v(s):
        names.add(P + s)
        return P + s

    def const(s, value):
        made.append(helper.make_node("Constant", [], [v(s)], name=v(s + "_const"),
                                     value=numpy_helper.from_array(np.asarray(value), P + s)))
        return P + s

    def op(kind, inputs, out, final=False, **attrs):
        made.append(helper.make_node(kind, inputs, [node.output[0] if final else v(out)], name=v(out + "_node"),
                                     **attrs))
        return made[-1].output[0]

    x = node.input[0]
    const("zero_i", np.array(0, np.int64))
    const("one_i", np.array(1, np.int64))
    const("zero_f", np.array(0, np.float32))
    const("one_f", np.array(1, np.float32))
    if half_pixel:
        const("half", np.array(0.5, np.float32))
    data = nhwc or x
    shape = op("Shape", [data], "in_shape")
    axes = {}
    for axis, in_axis, tag in ((2, 1 if nhwc else 2, "y"), (3, 2 if nhwc else 3, "x")):
        q = tag + "_"
        const(q + "axis", np.array(axis, np.int64))
        const(q + "in_axis", np.array(in_axis, np.int64))
        n_in = op("Gather", [shape, P + q + "in_axis"], q + "in", axis=0)
        in_f = op("Cast", [n_in], q + "in_f", to=TensorProto.FLOAT)
        static = outs[axis - 2]
        if static is not None:
            n_out = const(q + "out_i", np.array(static, np.int64))
        elif by == "sizes":
            n_out = op("Gather", [node.input[3], P + q + "axis"], q + "out", axis=0)
            n_out = op("Cast", [n_out], q + "out_i", to=TensorProto.INT64)
        else:  # onnxruntime's output size: the input size times the scale, in float32, truncated
            s = op("Gather", [node.input[2], P + q + "axis"], q + "scale_in", axis=0)
            s = op("Cast", [s], q + "scale_f", to=TensorProto.FLOAT)
            o = op("Floor", [op("Mul", [in_f, s], q + "out_raw")], q + "out_fl")
            n_out = op("Cast", [o], q + "out_i", to=TensorProto.INT64)
        out_f = op("Cast", [n_out], q + "out_f", to=TensorProto.FLOAT)
        scale = op("Div", [in_f, out_f], q + "scale")  # TF's CalculateResizeScale, float32
        if static is not None:
            grid = const(q + "grid", np.arange(static, dtype=np.float32))
        else:
            grid = op("Cast", [op("Range", [P + "zero_i", n_out, P + "one_i"], q + "range")], q + "grid",
                      to=TensorProto.FLOAT)
        if half_pixel:
            src = op("Sub", [op("Mul", [op("Add", [grid, P + "half"], q + "grid_h"), scale], q + "src_h"),
                             P + "half"], q + "src")
        else:
            src = op("Mul", [grid, scale], q + "src")
        fl = op("Floor", [src], q + "fl")
        lerp = op("Sub", [src, fl], q + "lerp")
        lo = op("Cast", [op("Max", [fl, P + "zero_f"], q + "lo_f")], q + "lo", to=TensorProto.INT64)
        last = op("Sub", [in_f, P + "one_f"], q + "last")
        hi = op("Cast", [op("Min", [op("Ceil", [src], q + "ce"), last], q + "hi_f")], q + "hi",
                to=TensorProto.INT64)
        axes[tag] = lo, hi, lerp
    (y0, y1, wy), (x0, x1, wx) = axes["y"], axes["x"]
    # onnxruntime gathers one block per index, so a gather along the innermost axis (one float a
    # block) is slow. From NCHW, the rows are gathered (blocks of whole rows), the width moved ahead
    # of them and the columns gathered there; the arithmetic, element by element in TF's order, runs
    # in that [N, C, out_w, out_h] layout and the result is moved back. From NHWC (blocks of C
    # floats) the gathers run in place and the final Transpose to NCHW cancels tf2onnx's back.
    if nhwc:
        row_axis, col_axis, swap, back = 1, 2, None, [0, 3, 1, 2]
        const("x_lerp_shape", np.array([-1, 1], np.int64))
        const("y_lerp_shape", np.array([-1, 1, 1], np.int64))
    else:
        row_axis, col_axis, swap, back = 2, 2, [0, 1, 3, 2], [0, 1, 3, 2]
        const("x_lerp_shape", np.array([-1, 1], np.int64))
        const("y_lerp_shape", np.array([-1], np.int64))
    wx = op("Reshape", [wx, P + "x_lerp_shape"], "x_lerp_col")
    if nhwc:  # [out_w, C]: a Mul broadcasting over blocks of C floats would be slow
        const("c_axis", np.array([3], np.int64))
        wx = op("Expand", [wx, op("Gather", [shape, P + "c_axis"], "c_dim", axis=0)], "x_lerp_wc")
    wy = op("Reshape", [wy, P + "y_lerp_shape"], "y_lerp_col")
    rows = {}
    for row, idx in (("top", y0), ("bot", y1)):
        r = op("Gather", [data, idx], row, axis=row_axis)
        if swap:
            r = op("Transpose", [r], row + "_t", perm=swap)
        left = op("Gather", [r, x0], row + "_l", axis=col_axis)
        right = op("Gather", [r, x1], row + "_r", axis=col_axis)
        rows[row] = op("Add", [left, op("Mul", [op("Sub", [right, left], row + "_d"), wx], row + "_dw")],
                       row + "_i")
    d = op("Mul", [op("Sub", [rows["bot"], rows["top"]], "vd"), wy], "vdw")
    op("Transpose", [op("Add", [rows["top"], d], "out_t")], "out", final=True, perm=back)
    return made
