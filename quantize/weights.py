"""Weight quantization that holds on every CPU: saturation-safe bit widths, rounding and bias passes.

onnxruntime's x86 u8s8 GEMM without VNNI multiplies with VPMADDUBSW, which adds two u8 x s8
products into a *saturating* int16: with activations up to 255, a pair of weights whose
magnitudes add up to more than 128 can overflow (32767 / 255 = 128.5). VNNI (VPDPBUSD)
accumulates in int32 and never saturates, so an artifact tuned on a VNNI machine silently loses
accuracy elsewhere. detzoo therefore builds one artifact for every CPU:

* weights that reach a GEMM (ordinary and pointwise convolutions, MatMul, Gemm) get a per-channel
  scale chosen so that the two largest magnitudes of each output channel add up to at most 128:
  every pair the kernel can form lies in one output channel (one column of the packed B matrix),
  so no pair can saturate, whatever the kernel's packing order. A channel whose largest weight
  stands alone keeps nearly 8 bits; where the two largest are equal it gets 7 (ORT's
  ``reduce_range``). ``PAIR_BOUND`` is what ``saturation_report`` checks in any artifact;
* depthwise convolutions (one input and one output channel per group) never reach that GEMM:
  onnxruntime's depthwise kernel widens both operands to int16 and accumulates in int32, so
  their weights keep the full symmetric 8-bit range [-127, 127];
* nothing here reads the CPU: the bytes depend only on the model and the calibration images.

Two refinements, each its own switch, need per-layer statistics of the float model on the
calibration images (``collect_layer_stats``: for each quantized convolution, the Gram matrix and
mean of its input patches, at up to 1024 sampled positions per image):

* ``adaround`` (opt-in: slow, and no gain on top of bias correction in the BENCHMARKS.md
  ablation): the rounding of each weight (up or down) is optimized layer by layer so that the
  layer's output on the calibration inputs moves least (AdaRound, Nagel et al. 2020). The
  reconstruction error ||(W~ - W) X||^2 equals tr(dW G dW^T) with G = X^T X, so each step costs
  one product with the Gram matrix, not a pass over the images;
* ``bias_correction`` (default): the mean output shift the quantized weights cause,
  (W~ - W) E[x], is subtracted from the bias (Nagel et al. 2019, "data-free quantization", with
  measured E[x]); it is what wins back the accuracy the bounded weights cost.

Owns the int8 weights and biases after onnxruntime's QDQ quantization (``requantize_weights``,
configured by ``WeightConfig``), the layer statistics and the artifact's saturation proof
(``saturation_report``). Must not touch the graph's nodes or activation ranges: int8.py places
the Q/DQ pairs, calibration.py measures the ranges.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

PAIR_BOUND = 128        # |w_i| + |w_j| of any two weights one GEMM column holds, u8 activations
DEPTHWISE_QMAX = 127
GEMM_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


class Bits(str, enum.Enum):
    """How many levels a weight may use: the bound, not a storage type (storage is always int8)."""

    PAIR_BOUND = "pair-bound"   # GEMM weights: the two largest |q| of a channel add up to <= 128
    SEVEN = "7bit"              # [-64, 64]: onnxruntime's reduce_range
    EIGHT = "8bit"              # [-127, 127]

    def qmax(self) -> int:
        return PAIR_BOUND // 2 if self is Bits.SEVEN else DEPTHWISE_QMAX


@dataclass(frozen=True)
class WeightConfig:
    """The weight passes after onnxruntime's QDQ quantization; every switch is recorded in the manifest."""

    gemm: Bits = Bits.PAIR_BOUND
    depthwise: Bits = Bits.EIGHT
    adaround: bool = False
    adaround_iters: int = 400
    bias_correction: bool = True

    def __post_init__(self):
        object.__setattr__(self, "gemm", Bits(self.gemm))
        object.__setattr__(self, "depthwise", Bits(self.depthwise))
        if self.depthwise is Bits.PAIR_BOUND:
            raise ValueError("depthwise weights take 7bit or 8bit")

    @property
    def saturation_safe(self) -> bool:
        return self.gemm is not Bits.EIGHT

    @property
    def needs_stats(self) -> bool:
        return self.adaround or self.bias_correction

    def to_json(self) -> dict:
        return {"gemm_weights": {Bits.PAIR_BOUND: f"per channel: the two largest |q| add up to <= {PAIR_BOUND}",
                                 Bits.SEVEN: "7-bit [-64, 64]", Bits.EIGHT: "8-bit [-127, 127]"}[self.gemm],
                "depthwise_weights": "8-bit [-127, 127]" if self.depthwise is Bits.EIGHT else "7-bit [-64, 64]",
                "adaround": {"iterations": self.adaround_iters} if self.adaround else False,
                "bias_correction": self.bias_correction}


@dataclass
class LayerStats:
    """Input patch statistics of one convolution over the calibration images."""

    gram: np.ndarray   # (K, K), or (C, k, k) per channel for depthwise
    mean: np.ndarray   # (K,), or (C, k)
    count: int = 0


@dataclass
class WeightLayer:
    """One quantized weight in a QDQ model: where its initializers are and what kind of kernel uses it."""

    node: str
    op_type: str
    depthwise: bool
    q_name: str          # int8 initializer
    scale_name: str
    axis: int
    bias_q: str | None = None
    bias_scale: str | None = None
    act_scale: float | None = None   # the node's input activation scale (u8)
    act_uint8: bool = True
    weight: object = field(default=None, repr=False)  # the initializer itself (subgraphs have their own)
    weight_uint8: bool = False       # u8 weights: onnxruntime's u8 x u8 kernels widen to 16 bits, exact


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints)
    return default


def is_depthwise(node, weight_shape) -> bool:
    """onnxruntime's depthwise kernel: a Conv whose every group has one input and one output channel."""
    group = _attr(node, "group", 1)
    return (node.op_type == "Conv" and group > 1 and len(weight_shape) == 4 and weight_shape[1] == 1
            and weight_shape[0] == group)


def weight_layers(model, subgraphs: bool = False, uint8: bool = False) -> list[WeightLayer]:
    """Every compute node of ``model`` (a QDQ graph) whose weight comes from an int8 DequantizeLinear
    (and a uint8 one with ``uint8``); with ``subgraphs`` also those inside Loop/If bodies, as in the
    installed artifacts, whose batch Loop holds the network."""
    from onnx import TensorProto, numpy_helper

    from detzoo.onnxgraph import initializers, producers, subgraphs as bodies

    types = (TensorProto.INT8, TensorProto.UINT8) if uint8 else (TensorProto.INT8,)
    out = []

    def visit(g, outer):
        inits = {**outer, **initializers(g)}
        producer = producers(g)
        for n in g.node:
            if n.op_type not in GEMM_OPS or len(n.input) < 2:
                continue
            dq = producer.get(n.input[1])
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            w = inits[dq.input[0]]
            if w.data_type not in types:
                continue
            layer = WeightLayer(n.name, n.op_type, is_depthwise(n, list(w.dims)), dq.input[0], dq.input[1],
                                _attr(dq, "axis", 1), weight=w, weight_uint8=w.data_type == TensorProto.UINT8)
            adq = producer.get(n.input[0])
            if adq is not None and adq.op_type == "DequantizeLinear" and adq.input[1] in inits:
                layer.act_scale = float(numpy_helper.to_array(inits[adq.input[1]]).reshape(-1)[0])
                if len(adq.input) > 2 and adq.input[2] in inits:
                    layer.act_uint8 = inits[adq.input[2]].data_type == TensorProto.UINT8
            if len(n.input) > 2 and n.input[2]:
                bdq = producer.get(n.input[2])
                if bdq is not None and bdq.op_type == "DequantizeLinear" and bdq.input[0] in inits:
                    layer.bias_q, layer.bias_scale = bdq.input[0], bdq.input[1]
            out.append(layer)
        if subgraphs:
            for n in g.node:
                for sub in bodies(n):
                    visit(sub, inits)

    visit(model.graph, {})
    return out


def channel_scales(w2d: np.ndarray, bits: Bits) -> tuple[np.ndarray, int]:
    """Per-output-channel scale and the |q| limit for weights ``w2d`` (channels x K)."""
    a = np.abs(w2d.astype(np.float64))
    top = np.sort(a, axis=1)[:, ::-1]
    qmax = bits.qmax()
    scale = top[:, 0] / qmax
    if bits is Bits.PAIR_BOUND and top.shape[1] > 1:
        # round(a1/s) + round(a2/s) <= PAIR_BOUND holds whenever (a1 + a2)/s <= PAIR_BOUND - 1
        scale = np.maximum(scale, (top[:, 0] + top[:, 1]) / (PAIR_BOUND - 1))
    scale = np.where(scale > 0, scale, 1.0)
    return scale.astype(np.float32), qmax


def _round_nearest(w2d, scale, qmax):
    return np.clip(np.round(w2d / scale[:, None]), -qmax, qmax)


def adaround(w2d: np.ndarray, scale: np.ndarray, qmax: int, gram: np.ndarray, iters: int,
             pair_limit: int | None = None, reg: float = 3.0, lr: float = 0.05) -> np.ndarray:
    """Integer weights (channels x K) whose rounding minimizes tr(dW G dW^T) (AdaRound with a Gram matrix).

    ``gram`` is (K, K), shared by every output channel, or (channels, K, K) for depthwise layers.
    Returns rounding-to-nearest unchanged when the optimized rounding reconstructs worse.
    """
    zeta, gamma = 1.1, -0.1
    w = w2d.astype(np.float64) / scale[:, None]   # in units of the scale
    floor = np.floor(w)
    rest = np.clip(w - floor, 1e-4, 1 - 1e-4)
    v = -np.log((zeta - gamma) / (rest - gamma) - 1)   # h(v) = rest at the start
    g = gram.astype(np.float64)
    sc2 = (scale.astype(np.float64) ** 2)[:, None]
    per_channel = g.ndim == 3

    def rec(q):
        d = q - w
        dg = np.einsum("ck,ckl->cl", d, g) if per_channel else d @ g
        return float(np.sum(dg * d * sc2)), dg

    near = _round_nearest(w2d, scale, qmax)
    base, _ = rec(near)
    if base <= 0:
        return near
    m = np.zeros_like(v)
    s2 = np.zeros_like(v)
    b1, b2 = 0.9, 0.999
    warm = int(0.2 * iters)
    for t in range(1, iters + 1):
        sig = 1 / (1 + np.exp(-v))
        h_raw = sig * (zeta - gamma) + gamma
        h = np.clip(h_raw, 0, 1)
        q = np.clip(floor + h, -qmax, qmax)
        _, dg = rec(q)
        grad_h = 2 * dg * sc2 / base
        if t > warm:
            beta = 20 + (2 - 20) * (t - warm) / max(1, iters - warm)
            x = 2 * h - 1
            grad_h += reg * (-beta * np.abs(x) ** (beta - 1) * np.sign(x) * 2) / v.size
        inside = (h_raw > 0) & (h_raw < 1) & (floor + h > -qmax) & (floor + h < qmax)
        grad = grad_h * (zeta - gamma) * sig * (1 - sig) * inside
        m = b1 * m + (1 - b1) * grad
        s2 = b2 * s2 + (1 - b2) * grad * grad
        v -= lr * (m / (1 - b1 ** t)) / (np.sqrt(s2 / (1 - b2 ** t)) + 1e-8)
    h = np.clip((1 / (1 + np.exp(-v))) * (zeta - gamma) + gamma, 0, 1)
    q = np.clip(floor + (h >= 0.5), -qmax, qmax)
    if pair_limit is not None:   # rounding two large weights up can break the pair bound: not in those channels
        top = np.sort(np.abs(q), axis=1)[:, ::-1]
        over = (top[:, 0] + (top[:, 1] if top.shape[1] > 1 else 0)) > pair_limit
        q[over] = near[over]
    return q if rec(q)[0] < base else near


def _as_2d(w: np.ndarray, axis: int) -> tuple[np.ndarray, tuple]:
    moved = np.moveaxis(w, axis, 0)
    return moved.reshape(moved.shape[0], -1), moved.shape


def _from_2d(w2d: np.ndarray, moved_shape: tuple, axis: int) -> np.ndarray:
    return np.moveaxis(w2d.reshape(moved_shape), 0, axis)


@dataclass
class WeightReport:
    layers: int = 0
    depthwise_8bit: int = 0
    gemm_channels_8bit: int = 0    # GEMM output channels whose largest |q| exceeds 64
    gemm_channels: int = 0
    adaround_layers: int = 0
    adaround_gain: list = field(default_factory=list)   # reconstruction error vs nearest, per layer
    bias_corrected: int = 0

    def to_json(self) -> dict:
        gains = self.adaround_gain
        return {"layers": self.layers, "depthwise_8bit": self.depthwise_8bit,
                "gemm_channels": self.gemm_channels, "gemm_channels_above_7bit": self.gemm_channels_8bit,
                "adaround_layers": self.adaround_layers,
                "adaround_error_vs_nearest_median": round(float(np.median(gains)), 4) if gains else None,
                "bias_corrected_layers": self.bias_corrected}


def requantize_weights(qdq_model, float_model, cfg: WeightConfig, stats: dict | None = None) -> WeightReport:
    """Rewrite every int8 weight (and its int32 bias) of ``qdq_model`` from ``float_model``'s float values.

    Nodes are matched by name: onnxruntime's quantizer keeps the float model's node names.
    """
    from onnx import numpy_helper

    from detzoo.onnxgraph import initializers

    g = qdq_model.graph
    inits = initializers(g)
    fnodes = {n.name: n for n in float_model.graph.node}
    finits = initializers(float_model.graph)
    report = WeightReport()
    for layer in weight_layers(qdq_model):
        fn = fnodes.get(layer.node)
        if fn is None or fn.input[1] not in finits:
            continue
        w = numpy_helper.to_array(finits[fn.input[1]]).astype(np.float32)
        axis = layer.axis if layer.axis >= 0 else layer.axis + w.ndim
        old_scale = numpy_helper.to_array(inits[layer.scale_name])
        if old_scale.size == 1:      # per-tensor weights: leave onnxruntime's (7-bit) choice alone
            continue
        w2d, moved = _as_2d(w, axis)
        bits = cfg.depthwise if layer.depthwise else cfg.gemm
        scale, qmax = channel_scales(w2d, bits)
        st = (stats or {}).get(layer.node)
        if cfg.adaround and st is not None and st.count:
            q = adaround(w2d, scale, qmax, st.gram, cfg.adaround_iters,
                         PAIR_BOUND if bits is Bits.PAIR_BOUND else None)
            near = _round_nearest(w2d, scale, qmax)
            report.adaround_layers += 1
            report.adaround_gain.append(_rec_ratio(q, near, w2d, scale, st.gram))
        else:
            q = _round_nearest(w2d, scale, qmax)
        report.layers += 1
        report.depthwise_8bit += int(layer.depthwise and bits is Bits.EIGHT)
        if not layer.depthwise:
            report.gemm_channels += q.shape[0]
            report.gemm_channels_8bit += int(np.sum(np.abs(q).max(axis=1) > PAIR_BOUND // 2))
        inits[layer.q_name].CopyFrom(numpy_helper.from_array(_from_2d(q.astype(np.int8), moved, axis),
                                                             layer.q_name))
        inits[layer.scale_name].CopyFrom(numpy_helper.from_array(scale.astype(old_scale.dtype),
                                                                 layer.scale_name))
        if layer.bias_q is None or len(fn.input) < 3 or fn.input[2] not in finits or layer.act_scale is None:
            continue
        b = numpy_helper.to_array(finits[fn.input[2]]).astype(np.float64)
        if cfg.bias_correction and st is not None and st.count:
            dw = q * scale[:, None].astype(np.float64) - w2d
            shift = np.einsum("ck,ck->c", dw, st.mean) if st.mean.ndim == 2 else dw @ st.mean
            b = b - shift
            report.bias_corrected += 1
        bscale = (layer.act_scale * scale.astype(np.float64)).astype(np.float32)
        bq = np.clip(np.round(b / bscale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        inits[layer.bias_q].CopyFrom(numpy_helper.from_array(bq, layer.bias_q))
        inits[layer.bias_scale].CopyFrom(numpy_helper.from_array(bscale, layer.bias_scale))
    return report


def _rec_ratio(q, near, w2d, scale, gram) -> float:
    w = w2d.astype(np.float64) / scale[:, None]

    def err(x):
        d = x - w
        dg = np.einsum("ck,ckl->cl", d, gram) if gram.ndim == 3 else d @ gram
        return float(np.sum(dg * d * (scale.astype(np.float64) ** 2)[:, None]))

    e0 = err(near)
    return err(q) / e0 if e0 > 0 else 1.0


# --- calibration statistics -------------------------------------------------------------------------

def _pads(node, kshape, hw) -> tuple[list, list, list]:
    """(pads [top, left, bottom, right], strides, dilations) of a 2-D convolution, auto_pad resolved."""
    strides = _attr(node, "strides", [1, 1])
    dil = _attr(node, "dilations", [1, 1])
    pads = _attr(node, "pads", [0, 0, 0, 0])
    auto = next((a.s.decode() for a in node.attribute if a.name == "auto_pad"), "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (-(-hw[i] // strides[i]) - 1) * strides[i] + (kshape[i] - 1) * dil[i] + 1 - hw[i])
                 for i in (0, 1)]
        first = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        pads = [first[0], first[1], total[0] - first[0], total[1] - first[1]]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    return pads, strides, dil


def sample_patches(x: np.ndarray, node, kshape, max_positions: int, rng) -> np.ndarray:
    """Input patches (positions, C, kh*kw) of ``node`` at up to ``max_positions`` random output positions."""
    n, c, h, w = x.shape
    kh, kw = kshape
    pads, st, dil = _pads(node, kshape, (h, w))
    oh = (h + pads[0] + pads[2] - (kh - 1) * dil[0] - 1) // st[0] + 1
    ow = (w + pads[1] + pads[3] - (kw - 1) * dil[1] - 1) // st[1] + 1
    total = n * oh * ow
    pos = np.arange(total) if total <= max_positions else np.sort(rng.choice(total, max_positions, replace=False))
    b, rest = np.divmod(pos, oh * ow)
    r, q = np.divmod(rest, ow)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    rows = r[:, None] * st[0] + np.arange(kh)[None, :] * dil[0]            # P, kh
    cols = q[:, None] * st[1] + np.arange(kw)[None, :] * dil[1]            # P, kw
    g = xp[b[:, None, None], :, rows[:, :, None], cols[:, None, :]]        # P, kh, kw, C
    return g.transpose(0, 3, 1, 2).reshape(len(pos), c, kh * kw)


def accumulate(stats: dict, name: str, x: np.ndarray, node, weight_shape, depthwise: bool,
               rng: np.random.Generator, max_positions: int = 1024) -> None:
    """Add one image's input of convolution ``name`` to its Gram matrix and patch mean."""
    if node.op_type != "Conv" or x.ndim != 4:
        return
    p = sample_patches(x.astype(np.float32, copy=False), node, weight_shape[2:], max_positions, rng)
    if depthwise:   # float32 products of one image, summed over images in float64
        gram = np.einsum("pck,pcl->ckl", p, p, optimize=True).astype(np.float64)
        mean = p.sum(axis=0, dtype=np.float64)
    else:
        flat = p.reshape(p.shape[0], -1)
        gram = (flat.T @ flat).astype(np.float64)
        mean = flat.sum(axis=0, dtype=np.float64)
    st = stats.get(name)
    if st is None:
        stats[name] = LayerStats(gram, mean, p.shape[0])
    else:
        st.gram += gram
        st.mean += mean
        st.count += p.shape[0]


def finish(stats: dict) -> dict:
    for st in stats.values():
        if st.count:
            st.gram /= st.count
            st.mean /= st.count
    return stats


def collect_layer_stats(float_path, nodes, batches, threads: int = 1, seed: int = 0) -> dict:
    """Gram matrix and mean of the float input of each Conv in ``nodes`` over the calibration ``batches``.

    Positions are subsampled per image (seeded), so the cost stays bounded on large feature maps.
    """
    import onnx
    import onnxruntime as ort

    from detzoo.onnxgraph import initializers

    nodes = set(nodes)
    model = onnx.load(str(float_path))
    inits = initializers(model.graph)
    targets = [(n, list(inits[n.input[1]].dims), is_depthwise(n, list(inits[n.input[1]].dims)))
               for n in model.graph.node if n.name in nodes and n.op_type == "Conv" and n.input[1] in inits]
    have = {o.name for o in model.graph.output}
    for t in sorted({n.input[0] for n, _, _ in targets} - have):
        model.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feed_name = sess.get_inputs()[0].name
    rng = np.random.default_rng(seed)
    stats: dict = {}
    for batch in batches:
        outs = dict(zip(names, sess.run(None, {feed_name: batch})))
        for node, wshape, dw in targets:
            accumulate(stats, node.name, outs[node.input[0]], node, wshape, dw, rng=rng)
    return finish(stats)


# --- the artifact's own guarantee ---------------------------------------------------------------------

def saturation_report(model) -> dict:
    """Whether any u8 x s8 weight pair of ``model`` can saturate VPMADDUBSW's int16 sum (x86 without VNNI).

    Proven from the artifact alone, batch Loop bodies included: for each GEMM weight, the two
    largest |q| of every output channel; depthwise convolutions run in int32 and u8 x u8 GEMMs
    (an integer TFLite's conversion) widen to 16 bits, both exact at any 8-bit value.
    """
    from onnx import numpy_helper

    checked, unsafe, worst = 0, [], 0
    layers = weight_layers(model, subgraphs=True, uint8=True)
    for layer in layers:
        if layer.depthwise or layer.weight_uint8 or not layer.act_uint8:
            continue
        q = numpy_helper.to_array(layer.weight).astype(np.int32)
        q2d, _ = _as_2d(np.abs(q), layer.axis if layer.axis >= 0 else layer.axis + q.ndim)
        top = np.sort(q2d, axis=1)[:, ::-1]
        pair = top[:, 0] + (top[:, 1] if top.shape[1] > 1 else 0)
        checked += 1
        worst = max(worst, int(pair.max()))
        if pair.max() > PAIR_BOUND:
            unsafe.append(layer.node)
    return {"saturation_safe": not unsafe, "gemm_weights_checked": checked,
            "depthwise_weights": sum(l.depthwise for l in layers),
            "u8_gemm_weights": sum(l.weight_uint8 and not l.depthwise for l in layers),
            "largest_pair_sum": worst, "bound": PAIR_BOUND, "unsafe_nodes": unsafe[:20],
            "unsafe_count": len(unsafe),
            "rule": f"u8 activations x s8 weights: the two largest |q| of every GEMM output channel add up to "
                    f"<= {PAIR_BOUND} (255 x {PAIR_BOUND} <= 32767); depthwise kernels accumulate in int32; "
                    "u8 x u8 GEMMs widen to 16 bits"}
