"""An integer TFLite's int8 tensors, re-expressed as uint8 so onnxruntime computes what TFLite does.

tf2onnx turns a full-integer TFLite model into QDQ ONNX with int8 activations and int8 weights.
onnxruntime's x86 CPU provider leaves int8-activation QDQ unfused (only the
``session.qdqisint8allowed`` option changes that, and the zoo's runners do not set it): every
quantized Conv then runs in float on dequantized values, and float sums round differently from
TFLite's int32 sums, so requantized outputs land one step off here and there (BENCHMARKS.md:
integer TFLite). Fused, it would multiply int8 weights with uint8 activations, whose pairs
saturate VPMADDUBSW's int16 sums on x86 CPUs without VNNI.

Adding 128 to every int8 value and zero point gives the same real numbers in uint8
(``(q + 128) - (z + 128) == q - z``; QuantizeLinear's rounding and saturation shift alike).
With uint8 activations onnxruntime fuses every DequantizeLinear -> Conv -> QuantizeLinear into an
integer QLinearConv by default, and uint8 weights take its u8 x u8 kernels, which widen to 16 bits
and sum exactly on every x86 CPU: int32 sums and float requantization, as TFLite's XNNPACK
kernels compute them.

Only graphs where this is a pure relabelling are changed: every int8 tensor must be made by a
QuantizeLinear or be an initializer, and be read only by DequantizeLinear or by ops that move
values without computing (``SHIFT_FREE``). Anything else leaves the model as tf2onnx made it.

Owns: that relabelling and its report. Does not touch: files, float tensors, any other graph
rewrite (tf2onnx, the contract wrapper).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Ops that only move, pick or compare-order values: uint8 = int8 + 128 commutes with them.
SHIFT_FREE = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat", "Slice",
              "Gather", "Split", "MaxPool", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"}


@dataclass(frozen=True)
class Uint8Report:
    changed: bool
    tensors: int
    initializers: int
    reason: str = ""

    def to_json(self) -> dict:
        return {"uint8_domain": self.changed, "tensors": self.tensors, "initializers": self.initializers,
                **({"kept_int8_because": self.reason} if self.reason else {})}


def to_uint8_domain(model):
    """(model, report): ``model`` with every int8 QDQ tensor shifted to uint8, or unchanged."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from detzoo.onnxgraph import consumers as consumer_map, has_subgraphs, initializers

    g = model.graph
    inits = initializers(g)
    consumers = consumer_map(g)
    if has_subgraphs(g):
        return model, Uint8Report(False, 0, 0, "the graph has subgraphs")

    # int8 tensors: QuantizeLinear outputs with an int8 zero point, and what shift-free ops make of them.
    def zp_is_int8(n):
        return len(n.input) > 2 and n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.INT8

    int8 = {n.output[0] for n in g.node if n.op_type == "QuantizeLinear" and zp_is_int8(n)}
    frontier = list(int8)
    while frontier:
        t = frontier.pop()
        for c in consumers.get(t, []):
            if c.op_type in SHIFT_FREE and c.input and c.input[0] == t:
                for o in c.output:
                    if o not in int8:
                        int8.add(o)
                        frontier.append(o)
    weights = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == TensorProto.INT8}
    if not int8 and not weights:
        return model, Uint8Report(False, 0, 0, "no int8 tensors")
    for t in int8 | weights:
        for c in consumers.get(t, []):
            data = c.input if c.op_type == "Concat" else c.input[:1]  # the inputs holding values
            ok = (c.op_type == "DequantizeLinear" and c.input[0] == t and zp_is_int8(c)) or (
                c.op_type in SHIFT_FREE and all(i in int8 for i in data) and t in data
                and all(i not in int8 | weights for i in c.input if i not in data))
            if not ok:
                return model, Uint8Report(False, 0, 0, f"{c.op_type} {c.name!r} computes on int8 values")
    graph_outputs = {o.name for o in g.output}
    if (int8 | weights) & graph_outputs:
        return model, Uint8Report(False, 0, 0, "an int8 tensor is a graph output")
    # Every zero point of the Q/DQ nodes touched, and every int8 weight, moves by +128.
    shift = set(weights)
    for n in g.node:
        if (n.op_type == "QuantizeLinear" and n.output[0] in int8) or (
                n.op_type == "DequantizeLinear" and n.input[0] in int8 | weights):
            shift.add(n.input[2])
    for n in g.node:  # a shifted zero point must not also serve an untouched node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in shift:
            touched = n.output[0] in int8 if n.op_type == "QuantizeLinear" else n.input[0] in int8 | weights
            if not touched:
                return model, Uint8Report(False, 0, 0, f"zero point {n.input[2]!r} is shared")
    for name in shift:
        t = inits[name]
        v = numpy_helper.to_array(t).astype(np.int16) + 128
        t.CopyFrom(numpy_helper.from_array(v.astype(np.uint8), name))
    # value_info recorded for the shifted tensors now lies about their type
    keep = [vi for vi in g.value_info if vi.name not in int8]
    del g.value_info[:]
    g.value_info.extend(keep)
    onnx.checker.check_model(model)
    return model, Uint8Report(True, len(int8), len(shift))
