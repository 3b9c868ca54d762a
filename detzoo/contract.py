"""The zoo contract every artifact keeps, whatever its source, and the ONNX wrapper that gives it.

The zoo's runners feed ``image_tensor:0`` as uint8 ``[N, H, W, 3]`` of any size and read
``num_detections, detection_boxes, detection_scores, detection_classes`` by position, taking
classes as dataset (COCO) category ids. TF1 OD API graphs already do that. TF2 SavedModels fix
the batch to one; TFLite models fix batch and size, may take float input in [-1, 1] and count
classes from 0. ``wrap`` moves what the caller would otherwise have to do into the graph:
a ``Loop`` over the batch whose body is the source model for one image, preceded by the source's
own preprocessing (TF's bilinear resize, the float normalization, the uint8 rounding of an
integer model) and followed by the class offset. The same wrapper gives any batch back to the
fp16 and int8 variants, which quantize builds from a batch-1 specialization.

Owns: the contract's IO spec and these graph rewrites. Does not touch: files, manifests, parity.
"""

from __future__ import annotations

import copy

import numpy as np

from detzoo.errors import DetzooError
from detzoo.source import OUTPUT_ROLES, IOSpec, TensorSpec

CONTRACT_INPUT = "image_tensor:0"
_P = "detzoo_contract/"  # prefix of every name the wrapper adds


def parse_size(text: str, option: str = "--input-size") -> tuple[int, int]:
    """``'300x300'`` -> (300, 300); heights and widths are pixels, 1..8192."""
    parts = str(text).lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise DetzooError(f"{option} takes HEIGHTxWIDTH such as 640x640, got {text!r}") from None
    if not (0 < h <= 8192 and 0 < w <= 8192):
        raise DetzooError(f"{option} takes sizes between 1 and 8192 pixels, got {text!r}")
    return h, w


def contract_io(source_io: IOSpec, output_names: list[str], input_name: str | None = None) -> IOSpec:
    """The IO spec of an artifact that keeps the contract: raw uint8 images of any size and batch."""
    name = input_name or (source_io.input.name if source_io.input.name in ("image_tensor:0", "input_tensor")
                          else CONTRACT_INPUT)
    return IOSpec(input=TensorSpec(name, "uint8", [None, None, None, 3]),
                  outputs=dict(zip(OUTPUT_ROLES, output_names)), num_classes=source_io.num_classes,
                  label_map=source_io.label_map)


def keeps_contract(source_io: IOSpec) -> bool:
    """True when the source itself takes raw uint8 images of any batch and size and gives dataset ids."""
    shape = source_io.input.shape
    return (source_io.input.dtype == "uint8" and not source_io.resize and source_io.class_offset == 0
            and len(shape) == 4 and not isinstance(shape[0], int))


def fixed_size_io(io: IOSpec, h: int, w: int) -> IOSpec:
    """A fixed-size variant is fed as the zoo feeds it: resized to h x w with OpenCV first."""
    d = io.to_dict()
    d["input"] = {**d["input"], "shape": [None, h, w, 3]}
    d.update(resize=[h, w], resize_with="cv2")
    return IOSpec.from_dict(d)


def fixed_size_name(precision: str, h: int, w: int) -> str:
    return f"{precision}-{h}x{w}"



# --- graph surgery ------------------------------------------------------------------------------

def value_dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _set_dims(vi, dims: list, names: list | None = None) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for i, d in enumerate(dims):
        dim = shape.dim.add()
        if d is None:
            if names and names[i]:
                dim.dim_param = names[i]
        else:
            dim.dim_value = int(d)


def batch_of_one(model) -> bool:
    dims = value_dims(model.graph.input[0])
    return bool(dims) and dims[0] == 1


def wrap(model, *, input_name: str, output_names: list[str], resize: tuple[int, int] | None = None,
         scale: float | None = None, offset: float = 0.0, round_to_uint8: bool = False,
         class_offset: int = 0, first_outside: bool = False, resize_with: str = "tf"):
    """``model`` (one image input, four detection outputs in contract order) for one image per
    call, wrapped in a Loop over the batch of a uint8 ``[N, H, W, 3]`` input.

    In the body, each image is cast to float and resized to ``resize`` (TF's bilinear as
    ``resize_with`` names it, IOSpec's ``tf`` or ``tf1``: ``tf_resize_nodes``), then either scaled
    (``scale``/``offset``: float models) or rounded back to uint8 (``round_to_uint8``: integer
    models), then fed to the model. Outside, ``class_offset`` is added to the classes and every
    output is float32. Initializers move into the body so onnxruntime folds and fuses them there
    exactly as at top level. ``first_outside``: image 0 runs at the top level instead and the Loop
    takes the rest, reading the weights from there (BENCHMARKS.md: what each costs per precision).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inner = onnx.ModelProto.FromString(model.SerializeToString()).graph
    # Names the outer graph defines must not be redefined inside the body (SSA across scopes).
    clash = {inner.input[0].name, *(o.name for o in inner.output)} & {input_name, *output_names}
    clash |= {x for n in _all_nodes(inner) for x in [*n.input, *n.output] if x.startswith(_P)}  # wrapped before
    clash |= {t.name for t in inner.initializer if t.name.startswith(_P)}
    _rename_values(inner, {n: _P + "model/" + n for n in clash})
    if len(inner.input) != 1 or len(inner.output) != 4:
        raise DetzooError(f"expected a model with one input and four outputs, got {len(inner.input)} and "
                          f"{len(inner.output)}")
    in_vi = inner.input[0]
    in_dims = value_dims(in_vi)
    in_type = in_vi.type.tensor_type.elem_type
    if len(in_dims) != 4:
        raise DetzooError(f"input {in_vi.name} has rank {len(in_dims)}; expected [batch, height, width, 3]")

    def per_image(index: str) -> tuple[list, dict]:
        """Nodes from the batch and an image index to that image's four outputs, squeezed."""
        nodes = []
        img = _P + "image"
        nodes.append(helper.make_node("Gather", [CONTRACT_LOOP_INPUT, index], [_P + "hwc"], axis=0))
        nodes.append(helper.make_node("Unsqueeze", [_P + "hwc", _P + "axis0"], [img]))
        x = img
        if resize is not None or in_type == TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [x], [_P + "f"], to=TensorProto.FLOAT))
            x = _P + "f"
        if resize is not None:
            rnodes, rconsts = tf_resize_nodes(x, _P + "resized", resize[0], resize[1], _P + "resize/",
                                              half_pixel=resize_with != "tf1")
            nodes.extend(rnodes)
            consts.update(rconsts)
            x = _P + "resized"
        if in_type == TensorProto.FLOAT:
            if scale is not None:
                consts[_P + "scale"] = np.array(scale, np.float32)
                consts[_P + "offset"] = np.array(offset, np.float32)
                nodes.append(helper.make_node("Mul", [x, _P + "scale"], [_P + "scaled"]))
                nodes.append(helper.make_node("Add", [_P + "scaled", _P + "offset"], [_P + "normalized"]))
                x = _P + "normalized"
        elif in_type == TensorProto.UINT8:
            if x != img:  # resized in float: back to the pixels an integer model takes
                if not round_to_uint8:
                    raise DetzooError("a uint8 model resized in float needs round_to_uint8")
                consts[_P + "lo"], consts[_P + "hi"] = np.array(0, np.float32), np.array(255, np.float32)
                nodes.append(helper.make_node("Round", [x], [_P + "rounded"]))
                nodes.append(helper.make_node("Clip", [_P + "rounded", _P + "lo", _P + "hi"], [_P + "clipped"]))
                nodes.append(helper.make_node("Cast", [_P + "clipped"], [_P + "u8"], to=TensorProto.UINT8))
                x = _P + "u8"
        else:
            raise DetzooError(f"input {in_vi.name} is {TensorProto.DataType.Name(in_type)}; expected uint8 or float")
        nodes.append(helper.make_node("Identity", [x], [in_vi.name]))
        nodes.extend(copy.deepcopy(n) for n in inner.node)
        outs = {}
        for role, o in zip(OUTPUT_ROLES, inner.output):
            # Each image yields [1, ...]; squeezed, the Loop stacks [N, ...] as the contract wants.
            outs[role] = _P + role + "_one"
            nodes.append(helper.make_node("Squeeze", [o.name, _P + "axis0"], [outs[role]]))
        return nodes, outs

    consts = {_P + "axis0": np.array([0], np.int64)}
    weights = list(inner.initializer)
    elem = {role: o.type.tensor_type.elem_type for role, o in zip(OUTPUT_ROLES, inner.output)}
    top = [helper.make_node("Identity", [input_name], [CONTRACT_LOOP_INPUT]),
           helper.make_node("Shape", [input_name], [_P + "n1"], start=0, end=1),
           helper.make_node("Squeeze", [_P + "n1", _P + "top_axis0"], [_P + "n"])]
    body_index = _P + "i"
    if first_outside:
        # Image 0 at the top level, where onnxruntime folds and fuses everything (a Loop body misses
        # some of it: fp16 weights are cast on every call there); the rest in the Loop.
        consts[_P + "zero"] = np.array(0, np.int64)
        consts[_P + "one"] = np.array(1, np.int64)
        first_nodes, first_outs = per_image(_P + "zero")
        produced = {x for n in first_nodes for x in n.output} | {in_vi.name}
        first_graph = helper.make_graph(first_nodes, "first", [], [])
        _rename_values(first_graph, {x: _P + "first/" + x for x in produced})
        top += list(first_graph.node)
        top.append(helper.make_node("Sub", [_P + "n", _P + "one"], [_P + "rest"]))
        body_index = _P + "i1"
    body_nodes, outs = per_image(body_index)
    if first_outside:
        body_nodes.insert(0, helper.make_node("Add", [_P + "i", _P + "one"], [body_index]))
    body_nodes.append(helper.make_node("Identity", [_P + "cond"], [_P + "cond_out"]))
    body_outputs = [helper.make_tensor_value_info(_P + "cond_out", TensorProto.BOOL, [])]
    body_outputs += [helper.make_tensor_value_info(outs[r], elem[r], None) for r in OUTPUT_ROLES]
    body_consts = {} if first_outside else consts
    body = helper.make_graph(
        body_nodes, "detzoo_contract_body",
        [helper.make_tensor_value_info(_P + "i", TensorProto.INT64, []),
         helper.make_tensor_value_info(_P + "cond", TensorProto.BOOL, [])],
        body_outputs,
        initializer=([] if first_outside else weights) + [numpy_helper.from_array(v, k) for k, v in body_consts.items()])
    body.value_info.extend(inner.value_info)
    top.append(helper.make_node("Loop", [_P + ("rest" if first_outside else "n"), ""],
                                [_P + r + ("_rest" if first_outside else "_raw") for r in OUTPUT_ROLES], body=body,
                                name=_P + "batch_loop"))
    top_consts = {_P + "top_axis0": np.array([0], np.int64)}
    if first_outside:
        top_consts.update(consts)
        for role in OUTPUT_ROLES:
            top.append(helper.make_node("Unsqueeze", [_P + "first/" + outs[role], _P + "axis0"],
                                        [_P + role + "_first"]))
            top.append(helper.make_node("Concat", [_P + role + "_first", _P + role + "_rest"],
                                        [_P + role + "_all"], axis=0))
    raw = {r: _P + r + ("_all" if first_outside else "_raw") for r in OUTPUT_ROLES}
    for role, name in zip(OUTPUT_ROLES, output_names):
        src = raw[role]
        if role == "detection_classes" and class_offset:
            top.append(helper.make_node("Cast", [src], [_P + "classes_f"], to=TensorProto.FLOAT))
            top_consts[_P + "class_offset"] = np.array(class_offset, np.float32)
            top.append(helper.make_node("Add", [_P + "classes_f", _P + "class_offset"], [name]))
        else:
            top.append(helper.make_node("Cast", [src], [name], to=TensorProto.FLOAT))
    k = {r: value_dims(o)[1] if len(value_dims(o)) > 1 else None for r, o in zip(OUTPUT_ROLES, inner.output)}
    shapes = {"num_detections": ["batch"], "detection_boxes": ["batch", k["detection_boxes"], 4],
              "detection_scores": ["batch", k["detection_scores"]],
              "detection_classes": ["batch", k["detection_classes"]]}
    outputs = []
    for role, name in zip(OUTPUT_ROLES, output_names):
        vi = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        dims = shapes[role]
        _set_dims(vi, [None if d == "batch" else d for d in dims],
                  ["batch" if d == "batch" else (None if d is not None else f"{role}_{i}") for i, d in enumerate(dims)])
        outputs.append(vi)
    inp = helper.make_tensor_value_info(input_name, TensorProto.UINT8, None)
    _set_dims(inp, [None, None, None, 3], ["batch", "height", "width", None])
    graph = helper.make_graph(top, inner.name or "detzoo", [inp], outputs,
                              initializer=(weights if first_outside else [])
                              + [numpy_helper.from_array(v, k) for k, v in top_consts.items()])
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name=model.producer_name,
                            producer_version=model.producer_version)
    out.ir_version = model.ir_version
    for p in model.metadata_props:
        out.metadata_props.add().CopyFrom(p)
    onnx.checker.check_model(out)
    return out


CONTRACT_LOOP_INPUT = _P + "batch"


def rename_io(model, input_name: str, output_names: list[str]):
    """Rename the input (and its uses) and the outputs in place, for an artifact already in shape."""
    from onnx import helper

    g = model.graph
    old_in = g.input[0].name
    if old_in != input_name:
        for n in _all_nodes(g):
            for i, x in enumerate(n.input):
                if x == old_in:
                    n.input[i] = input_name
        g.input[0].name = input_name
    for o, new in zip(list(g.output), output_names):
        if o.name != new:
            g.node.append(helper.make_node("Identity", [o.name], [new], name=_P + new))
            o.name = new
    return model


def _rename_values(g, mapping: dict) -> None:
    """Rename values of ``g`` wherever they are defined or used, subgraphs included."""
    if not mapping:
        return
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.name in mapping:
            vi.name = mapping[vi.name]
    for t in g.initializer:
        if t.name in mapping:
            t.name = mapping[t.name]
    for n in _all_nodes(g):
        for i, x in enumerate(n.input):
            if x in mapping:
                n.input[i] = mapping[x]
        for i, x in enumerate(n.output):
            if x in mapping:
                n.output[i] = mapping[x]


def _all_nodes(g):
    from detzoo.onnxgraph import walk_nodes

    return walk_nodes(g)


def fix_input_size(model, h: int, w: int):
    """A copy of ``model`` whose input height and width are fixed (the zoo's fixed-size variants)."""
    import onnx

    out = onnx.ModelProto.FromString(model.SerializeToString())
    vi = out.graph.input[0]
    dims = value_dims(vi)
    if len(dims) != 4:
        raise DetzooError(f"input {vi.name} has rank {len(dims)}; expected [batch, height, width, 3]")
    for axis, want in ((1, h), (2, w)):
        if dims[axis] is not None and dims[axis] != want:
            raise DetzooError(f"--input-size {h}x{w}: the model's input is fixed to {dims[1]}x{dims[2]}")
        d = vi.type.tensor_type.shape.dim[axis]
        d.ClearField("dim_param")
        d.dim_value = want
    del out.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(out)


def _axis_tf(n_out: int, n_in: int, half_pixel: bool = True):
    """TF's bilinear source indices and weights along one axis, in float32 as TF computes them; with
    half-pixel centres (TF2's ``tf.image.resize``) or without (TF1's ``resize_images``). ``ceil``
    for the upper neighbour differs from TF's ``floor + 1`` only where its weight is 0."""
    scale = np.float32(n_in) / np.float32(n_out)
    half = np.float32(0.5 if half_pixel else 0.0)
    src = (np.arange(n_out, dtype=np.float32) + half) * scale - half
    fl = np.floor(src)
    lo = np.maximum(fl, 0).astype(np.int64)
    hi = np.minimum(np.ceil(src), n_in - 1).astype(np.int64)
    return lo, hi, (src - fl).astype(np.float32)


def resize_like_tf(image: np.ndarray, h: int, w: int, half_pixel: bool = True) -> np.ndarray:
    """Bilinear resize without antialiasing, in float32, with TF's own formula: half-pixel centres
    as ``tf.image.resize``, or (``half_pixel=False``) as TF1's ``tf.image.resize_images``, which is
    what the OD API's image resizers call, TF2 exports included. The contract wrapper computes the
    same inside the graph. RGB uint8 [H, W, 3] -> float32 [h, w, 3]."""
    x = image.astype(np.float32)
    y0, y1, wy = _axis_tf(h, x.shape[0], half_pixel)
    x0, x1, wx = _axis_tf(w, x.shape[1], half_pixel)
    top, bot = x[y0], x[y1]
    wx = wx[None, :, None]
    t = top[:, x0] + (top[:, x1] - top[:, x0]) * wx
    b = bot[:, x0] + (bot[:, x1] - bot[:, x0]) * wx
    return (t + (b - t) * wy[:, None, None]).astype(np.float32)


def tf_resize_nodes(x: str, out: str, h: int, w: int, prefix: str, half_pixel: bool = True) -> tuple[list, dict]:
    """ONNX nodes computing ``resize_like_tf`` (with ``half_pixel``) of the float NHWC tensor ``x`` into ``out``.

    onnxruntime's own linear Resize differs from TF by up to 0.025 of a pixel level (it derives
    weights another way), enough to flip uint8 roundings of integer models; gathering the four
    neighbours and interpolating with TF's formula matches TF to float rounding."""
    from onnx import TensorProto, helper

    P = prefix
    nodes, consts = [], {}
    consts[P + "half"] = np.array(0.5 if half_pixel else 0.0, np.float32)
    consts[P + "zero"] = np.array(0.0, np.float32)
    consts[P + "one_i"] = np.array(1, np.int64)
    for axis, n_out, tag in ((1, h, "y"), (2, w, "x")):
        q = f"{P}{tag}_"
        consts[q + "out_f"] = np.array(n_out, np.float32)
        consts[q + "grid"] = np.arange(n_out, dtype=np.float32) + consts[P + "half"]
        nodes += [
            helper.make_node("Shape", [x], [q + "n1"], start=axis, end=axis + 1),
            helper.make_node("Squeeze", [q + "n1", P + "axes0"], [q + "n"]),
            helper.make_node("Cast", [q + "n"], [q + "n_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", [q + "n_f", q + "out_f"], [q + "scale"]),
            helper.make_node("Mul", [q + "grid", q + "scale"], [q + "s0"]),
            helper.make_node("Sub", [q + "s0", P + "half"], [q + "src"]),
            helper.make_node("Floor", [q + "src"], [q + "fl"]),
            helper.make_node("Sub", [q + "src", q + "fl"], [q + "lerp"]),
            helper.make_node("Max", [q + "fl", P + "zero"], [q + "lo_f"]),
            helper.make_node("Cast", [q + "lo_f"], [q + "lo"], to=TensorProto.INT64),
            helper.make_node("Ceil", [q + "src"], [q + "ce"]),
            helper.make_node("Cast", [q + "ce"], [q + "ce_i"], to=TensorProto.INT64),
            helper.make_node("Sub", [q + "n", P + "one_i"], [q + "last"]),
            helper.make_node("Min", [q + "ce_i", q + "last"], [q + "hi"]),
        ]
    consts[P + "axes0"] = np.array([0], np.int64)
    consts[P + "lerp_x_shape"] = np.array([1, 1, w, 1], np.int64)
    consts[P + "lerp_y_shape"] = np.array([1, h, 1, 1], np.int64)
    y, xx = f"{P}y_", f"{P}x_"
    nodes += [
        helper.make_node("Reshape", [xx + "lerp", P + "lerp_x_shape"], [P + "wx"]),
        helper.make_node("Reshape", [y + "lerp", P + "lerp_y_shape"], [P + "wy"]),
        helper.make_node("Gather", [x, y + "lo"], [P + "top"], axis=1),
        helper.make_node("Gather", [x, y + "hi"], [P + "bot"], axis=1),
    ]
    for row in ("top", "bot"):
        r = P + row
        nodes += [
            helper.make_node("Gather", [r, xx + "lo"], [r + "_l"], axis=2),
            helper.make_node("Gather", [r, xx + "hi"], [r + "_r"], axis=2),
            helper.make_node("Sub", [r + "_r", r + "_l"], [r + "_d"]),
            helper.make_node("Mul", [r + "_d", P + "wx"], [r + "_dw"]),
            helper.make_node("Add", [r + "_l", r + "_dw"], [r + "_i"]),
        ]
    nodes += [
        helper.make_node("Sub", [P + "bot_i", P + "top_i"], [P + "vd"]),
        helper.make_node("Mul", [P + "vd", P + "wy"], [P + "vdw"]),
        helper.make_node("Add", [P + "top_i", P + "vdw"], [out]),
    ]
    return nodes, consts
