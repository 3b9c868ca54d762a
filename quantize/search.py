"""Accuracy-search pass: return the most sensitive quantized nodes to float until the drop fits the budget.

Sensitivity of a node is the error its quantization alone causes at the network's outputs (the
box-encoding and class-logit tensors the heads hand to decoding): the float model is run with only
that node fake-quantized (its weights as the int8 variant stores them, its output activation
through QuantizeLinear/DequantizeLinear with the calibrated range), and the per-tensor
signal-to-quantization-noise ratio of every head output is taken with onnxruntime's
``qdq_loss_debug``. On the real SSDLite (every network node int8) this ranking is sharp: the first
depthwise convolution causes far more error than any other node, and returning the top few nodes
to float won back most of the lost fidelity. Rankings taken directly from
``qdq_loss_debug``'s tensor errors (weight error, error accumulated in the quantized model, local
activation plus weight error, growth of the accumulated error across the node) did not predict
which nodes matter: returning their top nodes moved AP either way. The figures are in
BENCHMARKS.md, "Figures moved from quantize docstrings". The drop itself is always measured on the
held-out check images.

Owns the search (``run``, configured by ``SearchConfig``, rebuilding through ``SearchContext``),
the sensitivity ranking and its log. Must not touch anything but the plan's exclusions: each step
rebuilds int8 with the int8 pass (int8.run) from the same calibration cache and statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detzoo.errors import CheckFailed
from detzoo.onnxgraph import consumers as consumer_map, initializers
from detzoo.quantize import int8
from detzoo.quantize.calibration import ImageReader, model_input
from detzoo.quantize.fidelity import Fidelity, FidelityProbe
from detzoo.quantize.plan import COMPUTE_OPS, INT8_OPS, PrecisionPlan
from detzoo.quantize.weights import is_depthwise
from detzoo.source import IOSpec

FOLLOWERS = {"Clip", "Relu"}  # activations that fuse into the node before them: returned with it
# The search aims at this share of --max-drop on the check images, so that the budget still holds on
# the evaluation images, which differ (BENCHMARKS.md: the check-to-evaluation gap measured).
SEARCH_TARGET = 0.5
RANK_IMAGES = 4            # calibration images the sensitivity ranking runs on


@dataclass(frozen=True)
class SearchConfig:
    """``max_drop``: AP points the int8 variant may lose on the check images; the search aims at
    ``target_share`` of it, ranking sensitivity on the first ``rank_images`` calibration images."""

    max_drop: float
    target_share: float = SEARCH_TARGET
    rank_images: int = RANK_IMAGES

    @property
    def target(self) -> float:
        return round(self.max_drop * self.target_share, 3)


@dataclass(frozen=True)
class SearchContext:
    """What each step rebuilds int8 from (the int8 pass's inputs) and measures it with."""

    source: Path                 # the float model int8 quantizes (prepared, or its CLE copy)
    plan: PrecisionPlan          # its exclusions grow with each step
    settings: int8.Int8Settings
    cache: Path                  # the calibration cache
    work: Path                   # where each step's model is written
    file_name: str               # the int8 artifact's file name; step k writes step{k}_<file_name>
    probe: FidelityProbe         # the check images
    calib_files: list            # the calibration images (the ranking runs on the first few)
    io: IOSpec
    stats: dict | None = None    # layer statistics for bias correction and AdaRound
    say: Callable = field(default=lambda msg: None, compare=False)


@dataclass(frozen=True)
class SearchOutcome:
    path: Path                   # the int8 model that met the budget
    quantized: list              # its quantized nodes
    fidelity: Fidelity
    log: dict                    # SearchLog.to_json(), recorded as the manifest's accuracy_search


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
    consumers = consumer_map(g)
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
        inits = initializers(mg)
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


def run(config: SearchConfig, ctx: SearchContext, quantized: list[str], fid: Fidelity) -> SearchOutcome:
    """Return sensitive nodes to float, 1, 2, 4, ... at a time, until the drop fits ``config.target``.

    ``quantized`` and ``fid`` are the int8 pass's first build (``ctx.work``/``ctx.file_name``) and its
    fidelity. The budget itself (``max_drop``) decides success; the tighter aim leaves margin for
    images other than the check images. Raises CheckFailed when even the last step misses the budget.
    """
    import onnx

    plan, say = ctx.plan, ctx.say
    log = SearchLog(config.max_drop, config.target)
    aim = log.target
    path = ctx.work / ctx.file_name
    log.steps.append(SearchStep(0, [], len(quantized), fid.to_json()))
    if fid.drop_points <= aim:
        log.met = True
        return SearchOutcome(path, quantized, fid, log.to_json())
    say("int8: ranking quantized nodes by the output error each causes alone")
    ranked = rank_sensitivity(ctx.source, plan, quantized, ctx.cache, ctx.settings,
                              ctx.calib_files[:config.rank_images], ctx.io, ctx.stats)
    log.ranking = list(ranked)
    model = onnx.load(str(ctx.source))
    take, step = 1, 0
    while fid.drop_points > aim and ranked:
        step += 1
        batch, ranked = ranked[:take], ranked[take:]
        returned = []
        for node, nsr in batch:
            why = f"accuracy search step {step}: output noise-to-signal {nsr:.2e} when quantized alone"
            for n in [node, *followers_of(model, node, set(quantized))]:
                plan.exclude(n, why)
                returned.append(n)
        if not plan.reduced(INT8_OPS):
            break
        path = ctx.work / f"step{step}_{ctx.file_name}"
        quantized = int8.run(ctx.source, plan, ctx.settings, ctx.cache, path, ctx.stats)
        fid = ctx.probe.measure(path)
        log.steps.append(SearchStep(step, returned, len(quantized), fid.to_json()))
        say(f"int8: step {step}: {len(returned)} node(s) back to float, drop {fid.drop_points:.2f} points")
        take *= 2
    log.met = fid.drop_points <= config.max_drop
    if not log.met:
        raise CheckFailed(f"int8 cannot meet --max-drop {config.max_drop}: best drop {fid.drop_points:.2f} AP "
                          f"points after returning {len(plan.excluded)} nodes to float; nothing was written")
    return SearchOutcome(path, quantized, fid, log.to_json())
