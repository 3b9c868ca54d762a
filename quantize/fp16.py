"""fp16 pass: the network's nodes compute in float16, everything the plan keeps float stays float32.

onnxconverter-common's ``convert_float_to_float16`` walks into Loop bodies and gives their carried
values and outer-scope inputs mismatched types (the model then fails to load), and its block list
converts shared initializers for blocked nodes too. This pass instead converts exactly the nodes
the precision plan names: their float32 initializers become float16 (a copy where an initializer
is shared with a float32 node), and one Cast is inserted on each tensor that crosses between the
two precisions. The image input and the detection outputs keep their types.

Owns that conversion (``run``). Must not touch the plan (plan.py decides which nodes; this pass
only applies it) nor any node outside it beyond the Casts at its boundary.
"""

from __future__ import annotations

import numpy as np

FLOAT, FLOAT16 = 1, 10
FP16_MAX = float(np.finfo(np.float16).max)
# Ops converted, with the inputs that share the data type (None: every float input). Others stay
# float32 even inside the network: their output type is not tied to the input's, or onnxruntime
# has no float16 kernel worth the casts.
FP16_OPS = {op: None for op in (
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Clip", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
    "HardSwish", "Add", "Sub", "Mul", "Div", "Min", "Max", "Concat", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Flatten", "Slice", "Split", "Pad", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization",
    "Identity", "Softmax", "Tile", "Expand", "Gather", "DepthToSpace", "SpaceToDepth")}
FP16_OPS.update({"Resize": {0}, "Upsample": {0}})  # scales/roi stay float32


def _to_fp16(arr: np.ndarray) -> np.ndarray:
    """Clamp to the float16 range first: overflow would turn a large weight into inf."""
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)


def run(model, nodes: set[str]):
    """Return a copy of ``model`` in which the named nodes compute in float16."""
    import onnx
    from onnx import helper, numpy_helper

    from detzoo.onnxgraph import initializers
    from detzoo.quantize.plan import readers

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    del g.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.value_info) + list(inferred.input)
            + list(inferred.output)}
    inits = initializers(g)
    for name, init in inits.items():
        elem[name] = init.data_type
    def typed(n) -> bool:  # every input and output has a known type: no guessing which ones are float
        return all(elem.get(t) for t in list(n.input) + list(n.output) if t)

    half = [n for n in g.node if n.name in nodes and n.op_type in FP16_OPS and typed(n)]
    half_names = {n.name for n in half}
    consumers = readers(g)
    graph_outputs = {o.name for o in g.output}

    def fp16_name(t: str) -> str:
        return f"{t}/fp16"

    produced_half = {o for n in half for o in n.output if o and elem.get(o) == FLOAT}
    new_inits, casts_in, casts_out = {}, {}, []
    for n in half:
        same_type = FP16_OPS[n.op_type]
        for k, t in enumerate(n.input):
            if not t or elem.get(t) != FLOAT or (same_type is not None and k not in same_type):
                continue
            if t in produced_half:
                n.input[k] = fp16_name(t)
            elif t in inits:
                shared = any(c.name not in half_names for c in consumers.get(t, []))
                if shared:
                    if t not in new_inits:
                        new_inits[t] = numpy_helper.from_array(_to_fp16(numpy_helper.to_array(inits[t])), fp16_name(t))
                    n.input[k] = fp16_name(t)
                else:
                    arr = _to_fp16(numpy_helper.to_array(inits[t]))
                    inits[t].CopyFrom(numpy_helper.from_array(arr, t))
            else:  # from a float32 node or the graph input
                if t not in casts_in:
                    casts_in[t] = helper.make_node("Cast", [t], [fp16_name(t)], to=FLOAT16, name=f"{t}/to_fp16")
                n.input[k] = fp16_name(t)
        for k, t in enumerate(n.output):
            if t in produced_half:
                n.output[k] = fp16_name(t)
                if t in graph_outputs or any(c.name not in half_names for c in consumers.get(t, [])):
                    casts_out.append(helper.make_node("Cast", [fp16_name(t)], [t], to=FLOAT, name=f"{t}/to_fp32"))
    g.initializer.extend(new_inits.values())
    # Keep a topological order: each Cast right after the node that produces what it reads.
    by_input: dict[str, list] = {}
    for c in list(casts_in.values()) + casts_out:
        by_input.setdefault(c.input[0], []).append(c)
    ordered = [c for t in (i.name for i in g.input) for c in by_input.get(t, [])]
    ordered += [c for t in list(by_input) if t in inits for c in by_input[t]]
    for n in g.node:
        ordered.append(n)
        for o in n.output:
            ordered.extend(by_input.get(o, []))
    del g.node[:]
    g.node.extend(ordered)
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)
