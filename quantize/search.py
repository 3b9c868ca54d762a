"""Accuracy-aware int8: return the most sensitive quantized nodes to float until the drop fits the budget.

Sensitivity of a node is the error its quantization alone causes at the network's outputs (the
box-encoding and class-logit tensors the heads hand to decoding): the float model is run with only
that node fake-quantized (its weights as the int8 variant stores them, its output activation
through QuantizeLinear/DequantizeLinear with the calibrated range), and the per-tensor
signal-to-quantization-noise ratio of every head output is taken with onnxruntime's
``qdq_loss_debug``. On the real SSDLite (all 157 network nodes int8, fidelity AP 0.958) this
ranking is sharp: the first depthwise convolution causes ten times the error of any other node,
and returning the top 1, 2 and 8 nodes to float gave AP 0.978, 0.986 and 0.995. Rankings taken
directly from ``qdq_loss_debug``'s tensor errors did not predict which nodes matter: their top 12
moved AP by -0.8 (weight error), -0.7 (error accumulated in the quantized model), -0.3 (local
activation plus weight error) and +1.1 points (growth of the accumulated error across the node).
The drop itself is always measured on the held-out check images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detzoo.quantize.calibration import ImageReader, model_input
from detzoo.quantize.plan import COMPUTE_OPS, PrecisionPlan
from detzoo.quantize.weights import is_depthwise

FOLLOWERS = {"Clip", "Relu"}  # activations that fuse into the node before them: returned with it


@dataclass
class SearchStep:
    step: int
    returned: list
    quantized_nodes: int
    fidelity: dict

    def to_json(self) -> dict:
        return {"step": self.step, "returned_to_float": self.returned, "quantized_nodes": self.quantized_nodes,
                **self.fidelity}


@dataclass
class SearchLog:
    max_drop: float
    target: float | None = None   # what the search aims at on the check images (<= max_drop)
    ranking: list = field(default_factory=list)  # (node, output noise-to-signal), most sensitive first
    steps: list = field(default_factory=list)
    met: bool = False

    def to_json(self) -> dict:
        return {"max_drop_points": self.max_drop, "target_points": self.target, "met": self.met,
                "ranking": "output noise-to-signal of each node quantized alone (qdq_loss_debug SQNR at the "
                           "network outputs)",
                "most_sensitive": [{"node": n, "output_nsr": float(f"{e:.3g}")} for n, e in self.ranking[:10]],
                "steps": [s.to_json() for s in self.steps]}


def _fake_quant_weight(w: np.ndarray, per_channel: bool, bits) -> np.ndarray:
    """Symmetric int8 weights at the artifact's bit width (weights.channel_scales), dequantized."""
    from detzoo.quantize.weights import Bits, channel_scales

    if per_channel and w.ndim > 1:
        w2d = w.reshape(w.shape[0], -1)
        scale, qmax = channel_scales(w2d, bits)
        return (np.clip(np.round(w2d / scale[:, None]), -qmax, qmax) * scale[:, None]).reshape(w.shape) \
            .astype(np.float32)
    qmax = 127.0 if bits is Bits.EIGHT else 64.0   # per tensor: onnxruntime's own (reduce_range when portable)
    scale = np.float32(np.abs(w).max() / qmax or 1.0)
    return (np.clip(np.round(w / scale), -qmax, qmax) * scale).astype(np.float32)


def _activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    if symmetric:
        r = max(abs(lo), abs(hi)) or 1.0
        return np.float32(r / 127.0), np.int8(0)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    return np.float32(scale), np.uint8(np.clip(round(-lo / scale), 0, 255))


def rank_sensitivity(float_path: Path, plan: PrecisionPlan, quantized: list[str], cache_path: Path, settings,
                     images: list, io, stats: dict | None = None) -> list[tuple[str, float]]:
    """Quantized compute nodes, most sensitive first, with the noise-to-signal their quantization causes."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.calibrate import load_tensors_data
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio as sqnr

    ranges = load_tensors_data(cache_path)
    base = onnx.load(str(float_path))
    g = base.graph
    network = set(plan.network)
    consumers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    heads = sorted({o for n in g.node if n.name in network for o in n.output
                    if o and any(c.name not in network for c in consumers.get(o, []))})
    present = {o.name for o in g.output}
    g.output.extend(helper.make_empty_tensor_value_info(h) for h in heads if h not in present)
    name = model_input(base)[0]
    feeds = list(ImageReader(images, io, name))

    def session(model):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        # The one-node fake quantization must stay what it is (see int8.guard_float_nodes).
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["WeightBiasQuantization"])

    reference = [session(base).run(heads, f) for f in feeds]
    blob = base.SerializeToString()
    quantized_set = set(quantized)
    scores = []
    for node in [n for n in g.node if n.name in quantized_set and n.op_type in COMPUTE_OPS]:
        model = onnx.ModelProto.FromString(blob)
        mg = model.graph
        inits = {i.name: i for i in mg.initializer}
        target = next(n for n in mg.node if n.name == node.name)
        if len(target.input) > 1 and target.input[1] in inits:
            w = numpy_helper.to_array(inits[target.input[1]])
            wc = settings.weight_config
            bits = wc.depthwise if is_depthwise(target, list(w.shape)) else wc.gemm
            fq = _fake_quant_weight(w, settings.per_channel, bits)
            inits[target.input[1]].CopyFrom(numpy_helper.from_array(fq, target.input[1]))
            st = (stats or {}).get(target.name)
            if wc.bias_correction and st is not None and len(target.input) > 2 and target.input[2] in inits:
                # the int8 variant's bias correction, so the ranking sees the error that remains
                dw = (fq - w).reshape(w.shape[0], -1).astype(np.float64)
                shift = np.einsum("ck,ck->c", dw, st.mean) if st.mean.ndim == 2 else dw @ st.mean
                b = numpy_helper.to_array(inits[target.input[2]])
                inits[target.input[2]].CopyFrom(numpy_helper.from_array((b - shift).astype(b.dtype),
                                                                        target.input[2]))
        follow = [c for c in consumers.get(node.output[0], []) if c.op_type in FOLLOWERS and c.name in quantized_set]
        tensor = follow[0].output[0] if follow else node.output[0]
        fetch = list(heads)
        if tensor in ranges.data:
            rmin, rmax = ranges[tensor].range_value
            lo, hi = float(np.min(rmin)), float(np.max(rmax))
            scale, zp = _activation_qparams(lo, hi, settings.symmetric_activations)
            q, dq = f"{tensor}/sens_q", f"{tensor}/sens_dq"
            mg.initializer.extend([numpy_helper.from_array(scale, q + "_scale"),
                                   numpy_helper.from_array(zp, q + "_zp")])
            for n in mg.node:
                n.input[:] = [dq if i == tensor else i for i in n.input]
            qdq = [helper.make_node("QuantizeLinear", [tensor, q + "_scale", q + "_zp"], [q]),
                   helper.make_node("DequantizeLinear", [q, q + "_scale", q + "_zp"], [dq])]
            nodes = list(mg.node)
            at = next(k for k, n in enumerate(nodes) if tensor in n.output) + 1
            del mg.node[:]
            mg.node.extend(nodes[:at] + qdq + nodes[at:])
            if tensor in heads:
                mg.output.append(helper.make_empty_tensor_value_info(dq))
                fetch = [dq if h == tensor else h for h in heads]
        sess = session(model)
        outs = [sess.run(fetch, f) for f in feeds]
        nsr = 0.0
        for k in range(len(heads)):
            db = sqnr([r[k] for r in reference], [o[k] for o in outs])
            nsr += 10 ** (-db / 10.0)
        scores.append((node.name, nsr))
    scores.sort(key=lambda s: -s[1])
    return scores


def followers_of(model, node: str, quantized: set[str]) -> list[str]:
    """The Clip/Relu that fused with ``node`` (returned to float together)."""
    outs = {o for n in model.graph.node if n.name == node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in FOLLOWERS and n.name in quantized
            and n.input and n.input[0] in outs]
