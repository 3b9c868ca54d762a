"""Find a detection model's input and its four outputs, per source format.

Known families are detected automatically: TF1 OD API graphs (``image_tensor`` and the four
``detection_*``/``num_detections`` nodes), TF2 zoo SavedModels (``input_tensor`` and a dict of the
four outputs) and TFLite models ending in ``TFLite_Detection_PostProcess``. ``--input`` and
``--output`` override.

Owns: the IO spec of a loaded source (names, shapes, preprocessing, class offset). Does not
touch: loading (convert/loading.py), conversion, files.
"""

from __future__ import annotations

import re

import numpy as np

from detzoo.errors import DetzooError
from detzoo.source import OUTPUT_ROLES, IOSpec, ModelFormat, ModelSource, TensorSpec

# TFLite_Detection_PostProcess outputs, in the op's order.
TFLITE_PP_ROLES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
SSD_FLOAT_SCALE, SSD_FLOAT_OFFSET = 1 / 127.5, -1.0  # SSD MobileNet float inputs take [-1, 1]


def _strip(name: str) -> str:
    return name[:-2] if name.endswith(":0") else name


def _override_outputs(output_names: list[str] | None) -> dict | None:
    if not output_names:
        return None
    if len(output_names) != 4:
        raise DetzooError(f"--output takes 4 names in the order {', '.join(OUTPUT_ROLES)}; "
                          f"got {len(output_names)}: {output_names}")
    return dict(zip(OUTPUT_ROLES, output_names))


def detect_io(src: ModelSource, input_name: str | None = None, output_names: list[str] | None = None,
              graph=None) -> IOSpec:
    """IO spec of ``src``; ``graph`` is the already-loaded GraphDef / (meta, signature) / interpreter."""
    fmt = src.format
    if fmt == ModelFormat.FROZEN_GRAPH:
        return _frozen_graph_io(graph, input_name, _override_outputs(output_names), src)
    if fmt == ModelFormat.SAVED_MODEL:
        return _saved_model_io(graph, input_name, _override_outputs(output_names), src)
    return _tflite_io(graph, input_name, _override_outputs(output_names), src)


def _frozen_graph_io(gd, input_name, outputs, src) -> IOSpec:
    nodes = {n.name: n for n in gd.node}
    placeholders = [n for n in gd.node if n.op == "Placeholder"]
    if input_name:
        node = nodes.get(_strip(input_name))
        if node is None or node.op != "Placeholder":
            raise DetzooError(f"--input {input_name!r} is not a placeholder of {src.path.name}; placeholders: "
                              f"{[p.name for p in placeholders]}")
    elif "image_tensor" in nodes:
        node = nodes["image_tensor"]
    elif len(placeholders) == 1:
        node = placeholders[0]
    else:
        raise DetzooError(f"cannot tell the input of {src.path.name}: no 'image_tensor' and "
                          f"{len(placeholders)} placeholders {[p.name for p in placeholders][:5]}; pass --input NAME")
    from tensorflow.python.framework import dtypes, tensor_shape

    dtype = dtypes.as_dtype(node.attr["dtype"].type).name
    dims = tensor_shape.TensorShape(node.attr["shape"].shape).as_list() if "shape" in node.attr else [None] * 4
    if outputs is None:
        missing = [r for r in OUTPUT_ROLES if r not in nodes]
        if missing:
            raise DetzooError(f"{src.path.name} has no detection outputs {missing}: expected nodes "
                              f"{', '.join(OUTPUT_ROLES)}, or pass --output NAME x4 in that order")
        outputs = {r: r + ":0" for r in OUTPUT_ROLES}
    else:
        bad = [n for n in outputs.values() if _strip(n).split(":")[0] not in nodes]
        if bad:
            raise DetzooError(f"--output names not in {src.path.name}: {bad}")
        outputs = {r: n if ":" in n else n + ":0" for r, n in outputs.items()}
    spec = TensorSpec(node.name + ":0", dtype, dims)
    return IOSpec(input=spec, outputs=outputs, resize=_fixed_resize(spec), num_classes=graph_num_classes(gd),
                  **_float_norm(dtype, 1.0, 0.0))


def _saved_model_io(graph, input_name, outputs, src) -> IOSpec:
    from tensorflow.python.framework import dtypes, tensor_shape

    _, sig = graph
    if input_name:
        if input_name not in sig.inputs:
            raise DetzooError(f"--input {input_name!r} is not an input of serving_default; inputs: {sorted(sig.inputs)}")
        key = input_name
    elif len(sig.inputs) == 1:
        key = next(iter(sig.inputs))
    else:
        raise DetzooError(f"serving_default has {len(sig.inputs)} inputs {sorted(sig.inputs)}; pass --input NAME")
    info = sig.inputs[key]
    dtype = dtypes.as_dtype(info.dtype).name
    dims = tensor_shape.TensorShape(info.tensor_shape).as_list() if not info.tensor_shape.unknown_rank else [None] * 4
    if outputs is None:
        missing = [r for r in OUTPUT_ROLES if r not in sig.outputs]
        if missing:
            raise DetzooError(f"serving_default of {src.path} (input {key!r} {dtype} {_dims(dims)}) lacks outputs "
                              f"{missing} (has {sorted(sig.outputs)}); pass --output NAME x4")
        outputs = {r: r for r in OUTPUT_ROLES}
    else:
        bad = [n for n in outputs.values() if n not in sig.outputs]
        if bad:
            raise DetzooError(f"--output names not outputs of serving_default: {bad}; outputs: {sorted(sig.outputs)}")
    spec = TensorSpec(key, dtype, dims)
    return IOSpec(input=spec, outputs=outputs, resize=_fixed_resize(spec), **_float_norm(dtype, 1.0, 0.0))


def _tflite_io(interp, input_name, outputs, src) -> IOSpec:
    inputs = interp.get_input_details()
    if len(inputs) != 1:
        raise DetzooError(f"{src.path.name} has {len(inputs)} inputs; expected one image input")
    inp = inputs[0]
    if input_name and input_name != inp["name"]:
        raise DetzooError(f"--input {input_name!r} is not the input of {src.path.name} ({inp['name']!r})")
    details = interp.get_output_details()
    by_index = {d["index"]: d for d in details}
    if outputs is None:
        pp = [op for op in interp._get_ops_details() if op["op_name"] == "TFLite_Detection_PostProcess"]
        if pp and all(i in by_index for i in pp[0]["outputs"]):
            names = dict(zip(TFLITE_PP_ROLES, (by_index[i]["name"] for i in pp[0]["outputs"])))
            outputs = {r: names[r] for r in OUTPUT_ROLES}
        else:
            by_role = {}
            for d in details:
                for r in OUTPUT_ROLES:
                    if re.search(rf"(^|[/:_]){r}($|[:/_])", d["name"]):
                        by_role[r] = d["name"]
            if len(by_role) != 4:
                raise DetzooError(f"{src.path.name} has no TFLite_Detection_PostProcess op and its outputs "
                                  f"{[d['name'] for d in details]} are not named for the detection roles; "
                                  "pass --output NAME x4")
            outputs = by_role
    else:
        names = {d["name"] for d in details}
        bad = [n for n in outputs.values() if n not in names]
        if bad:
            raise DetzooError(f"--output names not outputs of {src.path.name}: {bad}; outputs: {sorted(names)}")
    dtype = np.dtype(inp["dtype"]).name
    spec = TensorSpec(inp["name"], dtype, [int(d) for d in inp["shape"]])
    # The post-processing op emits 0-based class ids; datasets (COCO) count from 1. The graph was
    # exported from an OD API model whose resizer is TF1's resize_images (no half-pixel centres).
    return IOSpec(input=spec, outputs=outputs, resize=_fixed_resize(spec), class_offset=1, resize_with="tf1",
                  **_float_norm(dtype, SSD_FLOAT_SCALE, SSD_FLOAT_OFFSET))


def _dims(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _fixed_resize(spec: TensorSpec):
    hw = spec.fixed_hw
    return list(hw) if hw else None


def _float_norm(dtype: str, scale: float, offset: float) -> dict:
    return {"scale": scale, "offset": offset} if dtype.startswith("float") else {}


def graph_num_classes(gd) -> int | None:
    """Number of classes from the OD API class predictor's weights, where the graph shows it."""
    consts = {n.name: n for n in gd.node if n.op == "Const"}

    def last_dim(name):
        n = consts.get(name)
        return n.attr["value"].tensor.tensor_shape.dim[-1].size if n is not None else None

    for prefix in ("BoxPredictor_0/", "SecondStageBoxPredictor/"):
        cls_w = last_dim(prefix + "ClassPredictor/weights")
        box_w = last_dim(prefix + "BoxEncodingPredictor/weights")
        if cls_w and box_w:
            if prefix.startswith("Second"):
                return cls_w - 1
            anchors = box_w // 4
            return cls_w // anchors - 1 if anchors else None
    return None
