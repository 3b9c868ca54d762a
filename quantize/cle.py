"""Cross-layer equalization (CLE) of a float ONNX model, exact by construction.

Why: a quantized weight is only as fine as its quantization range, and in MobileNetV2 the output
channels of a depthwise filter differ by orders of magnitude in range (BENCHMARKS.md). Nagel et
al. 2019 ("Data-Free Quantization") note that for Conv1 -> f -> Conv2 with f positively
homogeneous (f(kx) = k f(x) for k > 0), multiplying output channel i of Conv1 (weights and
bias) by k_i and dividing input channel i of Conv2 by k_i leaves the network unchanged;
k_i = sqrt(r2_i / r1_i), with r1_i, r2_i the largest |weight| of the two channels, makes both
ranges sqrt(r1_i r2_i).

The pass rewrites initializers only, never the graph (so int8.py still folds every Relu6 into a
quantization range), and scales only what it can prove leaves the outputs unchanged:

* no activation and Relu are homogeneous for every k > 0;
* Relu6, Clip(0, M), is not: relu6(kx) = k relu6(x) needs x <= M and kx <= M. Given each channel's
  largest pre-activation on the calibration images (``channel_max``), a channel that stays below M
  gets k_i <= M / max_i and one that reaches M keeps k_i = 1; without measurements Clip pairs are
  skipped. This is exact on the measured images: an unseen input that drives a clamped channel past
  its calibration maximum is clipped a little earlier than before;
* anything else (a tensor or initializer used elsewhere, weights not initializers, grouped Conv2,
  Clip bounds other than [0, M], zero ranges) is skipped and counted in the report.

Measured on the real SSDLite (per-channel int8 weights, per-tensor uint8 activations; figures in
BENCHMARKS.md, "Figures moved from quantize docstrings"): CLE lowered fidelity AP on the check and
evaluation images, with and without bias correction, and the float model itself lost a little on
the evaluation images from the earlier clipping. With per-channel weights Conv1's quantization
does not depend on k at all (nor does a depthwise Conv2's), so CLE only moves the per-tensor
activation range between channels and reshapes a pointwise Conv2's rows; the paper's gain is for
per-tensor weights. Hence it is opt-in (``quantize --cle``), kept for ablation.

Owns the pass (``run``, configured by ``CleConfig``: a copy of the prepared model, equalized with
Relu6 bounds measured on the calibration images), ``pairs``, ``equalize`` and ``channel_max``.
Must not touch the graph's nodes (initializers only) nor the model it is given on disk.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from detzoo.onnxgraph import consumers as consumer_map, initializers, subgraphs


@dataclass
class CleReport:
    """What ``equalize`` did: pairs equalized, channels whose scale differs from 1, and what it skipped."""

    pairs: int = 0
    scaled_channels: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> pairs; "channel: ..." -> channels (first round)

    def to_json(self) -> dict:
        return {"pairs": self.pairs, "scaled_channels": self.scaled_channels, "skipped": dict(self.skipped)}


@dataclass(frozen=True)
class CleConfig:
    iterations: int = 2   # equalization rounds over every pair


@dataclass(frozen=True)
class Pair:
    """Conv1 -> [act] -> Conv2, by node name; ``clip_max`` is M for a Clip(0, M) between them."""

    conv1: str
    act: str | None
    conv2: str
    clip_max: float | None = None


def _attr(node, name, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _depthwise(node, wshape) -> bool:
    return len(wshape) == 4 and wshape[1] == 1 and _attr(node, "group", 1) == wshape[0] > 1


def _uses(graph) -> Counter:
    """How often each name is read, by the nodes of ``graph`` and its subgraphs, and as a graph output."""
    uses = Counter(o.name for o in graph.output)
    for n in graph.node:
        uses.update(i for i in n.input if i)
        for sub in subgraphs(n):
            uses.update(_uses(sub))  # outer names a subgraph reads count as uses
    return uses


def _clip_bounds(node, inits):
    """(min, max) of a Clip, or None when they are not constants; a missing bound is -inf / inf."""
    from onnx import numpy_helper

    if len(node.input) < 2 and any(a.name in ("min", "max") for a in node.attribute):  # opset < 11
        return _attr(node, "min", -np.inf), _attr(node, "max", np.inf)
    out = []
    for k, default in ((1, -np.inf), (2, np.inf)):
        name = node.input[k] if len(node.input) > k else ""
        if not name:
            out.append(default)
        elif name in inits:
            out.append(float(numpy_helper.to_array(inits[name]).reshape(-1)[0]))
        else:
            return None
    return tuple(out)


def _scan(model) -> tuple[list, Counter]:
    """(Pair, Conv1, Conv2) for each equalizable pair of ``model``, and per reason the candidates it rejected."""
    from onnx import TensorProto

    g = model.graph
    inits = initializers(g)
    graph_inputs = {i.name for i in g.input}
    uses = _uses(g)
    consumers = defaultdict(list, consumer_map(g))
    found, skipped = [], Counter()

    def sole(name):  # the one node reading ``name``, when nothing else (graph output, subgraph) does
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and uses[name] == 1 else None

    def own_init(name):  # a float initializer that nothing else reads and no feed can override
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.FLOAT and uses[name] == 1 and name not in graph_inputs

    for c1 in g.node:
        if c1.op_type != "Conv" or len(c1.output) != 1:
            continue
        out = c1.output[0]
        act = next((n for n in consumers.get(out, []) if n.op_type in ("Relu", "Clip")), None)
        if act is not None:
            out = act.output[0]
        if not any(n.op_type == "Conv" for n in consumers.get(out, [])):
            continue  # no candidate
        c2 = sole(out)
        if c2 is None or (act is not None and sole(c1.output[0]) is None):
            skipped["output has several consumers"] += 1
            continue
        if c2.input[0] != out:
            skipped["not Conv2's data input"] += 1
            continue
        weights = [c1.input[1], c2.input[1]] + ([c1.input[2]] if len(c1.input) > 2 and c1.input[2] else [])
        if not all(own_init(w) for w in weights):
            skipped["weights not own float initializers"] += 1
            continue
        w1, w2 = (list(inits[w].dims) for w in weights[:2])
        if not (_attr(c2, "group", 1) == 1 and len(w2) > 1 and w2[1] == w1[0]) and not (
                _depthwise(c2, w2) and w2[0] == w1[0]):
            skipped["Conv2 grouped, not depthwise"] += 1
            continue
        clip_max = None
        if act is not None and act.op_type == "Clip":
            bounds = _clip_bounds(act, inits)
            if bounds is None or bounds[0] != 0 or not bounds[1] > 0:
                skipped["Clip bounds not [0, M]"] += 1
                continue
            clip_max = None if np.isinf(bounds[1]) else bounds[1]
        found.append((Pair(c1.name, act.name if act is not None else None, c2.name, clip_max), c1, c2))
    return found, skipped


def pairs(model) -> list[Pair]:
    """The Conv1 -> [Relu | Clip(0, M)] -> Conv2 pairs of ``model`` that ``equalize`` considers."""
    return [p for p, _, _ in _scan(model)[0]]


def _ranges(w1, w2, depthwise2):
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = (np.abs(w2).reshape(w2.shape[0], -1) if depthwise2
          else np.abs(np.moveaxis(w2, 1, 0)).reshape(w2.shape[1], -1)).max(axis=1)
    return r1, r2


def equalize(model, act_max: dict | None = None, iterations: int = 1) -> CleReport:
    """Equalize every provable pair of ``model`` in place, ``iterations`` rounds; see the module docstring.

    ``act_max`` maps a Conv1 output name to the per-channel maximum of that pre-activation on the
    calibration images (``channel_max``); Clip(0, M) pairs without it are skipped.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = initializers(g)
    found, skipped = _scan(model)
    act_max = {k: np.asarray(v, np.float64).reshape(-1) for k, v in (act_max or {}).items()}
    todo = []
    for p, c1, c2 in found:
        if p.clip_max is not None and c1.output[0] not in act_max:
            skipped["Clip without act_max"] += 1
        else:
            todo.append((p, c1, c2))
    scaled, first = set(), Counter()
    for it in range(iterations):
        for j, (p, c1, c2) in enumerate(todo):
            w1, w2 = (numpy_helper.to_array(inits[c.input[1]]).astype(np.float64) for c in (c1, c2))
            dw2 = _depthwise(c2, w2.shape)
            r1, r2 = _ranges(w1, w2, dw2)
            ok = (r1 > 0) & (r2 > 0)
            k = np.ones_like(r1)
            k[ok] = np.sqrt(r2[ok] / r1[ok])
            if p.clip_max is not None:
                m = act_max[c1.output[0]]
                if m.shape != k.shape:
                    raise ValueError(f"act_max[{c1.output[0]!r}] has {m.size} channels, Conv has {k.size}")
                bound = np.where(m > 0, p.clip_max / np.maximum(m, 1e-30), np.inf)
                reached = m >= p.clip_max
                if it == 0:
                    first["channel: Relu6 bound reached, k = 1"] += int(reached.sum())
                    first["channel: k clamped to M / act_max"] += int((~reached & (k > bound)).sum())
                k = np.where(reached, 1.0, np.minimum(k, bound))
            if it == 0:
                first["channel: zero range, k = 1"] += int((~ok).sum())
            scaled.update((j, i) for i in np.flatnonzero(k != 1))
            shape1 = (-1,) + (1,) * (w1.ndim - 1)
            shape2 = shape1 if dw2 else (1, -1) + (1,) * (w2.ndim - 2)
            updates = {c1.input[1]: w1 * k.reshape(shape1), c2.input[1]: w2 / k.reshape(shape2)}
            if len(c1.input) > 2 and c1.input[2]:
                updates[c1.input[2]] = numpy_helper.to_array(inits[c1.input[2]]).astype(np.float64) * k
            for name, value in updates.items():
                inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
            if c1.output[0] in act_max:  # Conv1's output is now k times larger
                act_max[c1.output[0]] = act_max[c1.output[0]] * k
    skipped.update({r: n for r, n in first.items() if n})
    return CleReport(pairs=len(todo), scaled_channels=len(scaled), skipped=dict(skipped))


def channel_max(model_path, tensors: list[str], feeds) -> dict:
    """Per-channel (axis 1, NCHW) maximum of each of ``tensors`` over ``feeds`` (dicts input name -> array)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out: dict = {}
    for feed in feeds:
        for t, v in zip(tensors, sess.run(list(tensors), feed)):
            m = np.moveaxis(np.asarray(v), 1, 0).reshape(v.shape[1], -1).max(axis=1)
            out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def run(prepared, model, calib, io, work, say=None, config: CleConfig = CleConfig()) -> tuple:
    """Cross-layer equalization of the prepared model (a copy, ``work``/prepared_cle.onnx), Relu6 bounds
    measured on the calibration images; returns the copy's path and the report's JSON.

    ``model`` is ``prepared`` loaded; ``calib`` the CalibrationImages, fed through ``io``."""
    import onnx

    from detzoo.images import decode_image
    from detzoo.runners import preprocess

    found = pairs(model)
    name = model.graph.input[0].name
    tensors = sorted({next(n for n in model.graph.node if n.name == p.conv1).output[0] for p in found
                      if p.clip_max is not None})
    (say or (lambda msg: None))(f"int8: cross-layer equalization of {len(found)} convolution pairs")
    act_max = channel_max(prepared, tensors, ({name: preprocess(decode_image(p), io)} for p in calib.files))
    eq = onnx.load(str(prepared))
    report = equalize(eq, act_max, iterations=config.iterations)
    out = work / "prepared_cle.onnx"
    onnx.save(eq, str(out))
    return out, report.to_json()
