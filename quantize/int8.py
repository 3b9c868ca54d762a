"""int8 pass: static QDQ quantization of the plan's network nodes, tuned for onnxruntime's CPU kernels.

What makes int8 fast here (measured on the real SSDLite with benchmarks/bench_quantize.py; the
figures are in BENCHMARKS.md, "Figures moved from quantize docstrings"):

* uint8 asymmetric activations with int8 weights (u8s8, what VNNI's VPDPBUSD multiplies). With
  int8 *symmetric* activations (quantize_static's default) every Relu6 stays a float Clip between
  DequantizeLinear and QuantizeLinear, and onnxruntime fuses no s8s8 depthwise QLinearConv on
  x86: with this same plan every depthwise Conv ran in float among DequantizeLinear,
  QuantizeLinear and layout Transposes, slower than fp32. With uint8 the Relu6 range is the
  output quantization range itself, the Clip disappears and every quantized Conv fuses.
* Only the network is quantized: pre/postprocessing stays float (plan.py), which both keeps the
  accuracy and avoids Q/DQ traffic around ops that have no int8 kernel.
* The batch-1 pass (batch1.py) removes the map_fn Loops first, so quantization sees every node.
* Per-channel weights: per-tensor weights cost many AP points (the largest and smallest
  channel of a depthwise filter differ by orders of magnitude in range) and were not faster.
* One artifact for every CPU (``Int8Target.PORTABLE``): nothing here reads the build machine's
  CPU. Weights are bounded so that no u8 x s8 pair saturates VPMADDUBSW's int16 sum on x86
  without VNNI (weights.py says how, and proves it per artifact); ``Int8Target.VNNI`` allows the
  full 8-bit range for artifacts that will only run where the dot product accumulates in int32.
* The image-facing stem convolution stays float (stem_exclusions); QOperator format, and keeping
  the Clip nodes, measured the same speed as QDQ. onnxruntime needs graph optimization level
  "all": at "extended" (no NHWC layout transform) int8 lost much of its speed-up over fp32, at
  "basic" (no QDQ fusion) it ran slower than fp32.

Owns the pass (``run``: the QDQ model from calibrated ranges, configured by ``Int8Settings``),
the float guard and the stem exclusions. Must not touch the ranges (calibration.py computes them)
nor the plan's regions (plan.py); the weight values themselves are weights.py's.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from detzoo.errors import DetzooError
from detzoo.quantize.calibration import CalibMethod, CalibrationConfig
from detzoo.quantize.plan import INT8_OPS, PrecisionPlan


class Int8Target(str, enum.Enum):
    """Which CPUs the int8 artifact must be exact on."""

    PORTABLE = "portable"   # every CPU: no u8 x s8 weight pair can saturate VPMADDUBSW's int16 sum
    VNNI = "vnni"           # full 8-bit weights: exact only where u8 x s8 accumulates in int32 (VNNI, ARM)


class IntType(str, enum.Enum):
    UINT8 = "uint8"
    INT8 = "int8"

    @property
    def ort(self):
        from onnxruntime.quantization import QuantType

        return QuantType.QUInt8 if self is IntType.UINT8 else QuantType.QInt8


@dataclass(frozen=True)
class Int8Settings:
    """Typed stand-in for quantize_static's keyword arguments and its stringly ``extra_options``."""

    calib_method: CalibMethod = CalibMethod.MINMAX
    per_channel: bool = True
    target: Int8Target = Int8Target.PORTABLE
    reduce_range: bool | None = None    # True: 7-bit weights everywhere; None: the target's choice
    bias_correction: bool = True
    adaround: bool = False
    activations: IntType = IntType.UINT8
    weights: IntType = IntType.INT8
    percentile: float = 99.999          # percentile calibration: the share of values kept in range
    histogram_bins: int | None = None   # entropy/percentile: onnxruntime's default (128 / 2048) when None
    keep_removable_activations: bool = False  # True keeps Clip/Relu nodes (blocks fusion; for debugging)

    def __post_init__(self):
        for name, enum_type in (("calib_method", CalibMethod), ("activations", IntType), ("weights", IntType),
                                ("target", Int8Target)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum_type(value))
            except ValueError:
                raise DetzooError(f"{name.replace('_', '-')} must be one of {[e.value for e in enum_type]}, "
                                  f"got {value!r}") from None
        if not 50.0 < self.percentile <= 100.0:
            raise DetzooError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.histogram_bins is not None and self.histogram_bins < 16:
            raise DetzooError(f"histogram bins must be >= 16, got {self.histogram_bins}")
        if self.target is Int8Target.VNNI and self.reduce_range:
            raise DetzooError("--reduce-range (7-bit weights) contradicts --int8-target vnni (full 8-bit weights); "
                              "expected one of the two")
        if self.target is Int8Target.PORTABLE and self.reduce_range is False:
            raise DetzooError("--no-reduce-range asks for full 8-bit weights, which saturate on x86 CPUs without "
                              "VNNI, but --int8-target is portable; expected --int8-target vnni with it, or no "
                              "--no-reduce-range")
        if self.activations is IntType.INT8 and self.weights is IntType.UINT8:
            raise DetzooError("int8 activations with uint8 weights have no onnxruntime kernel; "
                              "use uint8 activations or int8 weights")

    @property
    def weight_config(self):
        from detzoo.quantize.weights import Bits, WeightConfig

        if self.target is Int8Target.VNNI:
            gemm = depthwise = Bits.EIGHT
        elif self.reduce_range:
            gemm = depthwise = Bits.SEVEN
        else:
            gemm, depthwise = Bits.PAIR_BOUND, Bits.EIGHT
        return WeightConfig(gemm=gemm, depthwise=depthwise, adaround=self.adaround,
                            bias_correction=self.bias_correction)

    @property
    def symmetric_activations(self) -> bool:
        return self.activations is IntType.INT8

    def quantize_kwargs(self) -> dict:
        from onnxruntime.quantization import QuantFormat

        # Portable: onnxruntime's own weights are 7-bit, so whatever the weight pass leaves alone is safe.
        return {"quant_format": QuantFormat.QDQ, "per_channel": self.per_channel,
                "reduce_range": self.target is Int8Target.PORTABLE,
                "activation_type": self.activations.ort, "weight_type": self.weights.ort,
                "calibrate_method": self.calib_method.ort}

    def extra_options(self) -> dict:
        return {"ActivationSymmetric": self.symmetric_activations, "WeightSymmetric": True,
                "QDQKeepRemovableActivations": self.keep_removable_activations}

    def calibrator_options(self) -> dict:
        """create_calibrator's options (its own key names, not quantize_static's)."""
        opts: dict = {"symmetric": self.symmetric_activations}
        if self.calib_method is CalibMethod.PERCENTILE:
            opts["percentile"] = self.percentile
        if self.histogram_bins and self.calib_method is not CalibMethod.MINMAX:
            opts["num_bins"] = self.histogram_bins
            if self.calib_method is CalibMethod.ENTROPY:
                opts["num_quantized_bins"] = min(128, self.histogram_bins)
        return opts

    def calibration(self) -> CalibrationConfig:
        """The calibration pass's config for these settings."""
        return CalibrationConfig(self.calib_method, self.calibrator_options())

    def to_json(self) -> dict:
        return {"format": "QDQ", "calib_method": self.calib_method.value, "per_channel": self.per_channel,
                "target": self.target.value, "reduce_range": bool(self.reduce_range),
                "weight_passes": self.weight_config.to_json(), "activations": f"{self.activations.value} "
                + ("symmetric" if self.symmetric_activations else "asymmetric"),
                "weights": f"{self.weights.value} symmetric", "percentile": self.percentile
                if self.calib_method is CalibMethod.PERCENTILE else None,
                "histogram_bins": self.histogram_bins, "keep_removable_activations": self.keep_removable_activations,
                "onnxruntime_extra_options": self.extra_options()}


WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm"}


def guard_float_nodes(model, float_nodes: set[str]) -> list[str]:
    """Keep float Conv/ConvTranspose/Gemm nodes float inside onnxruntime; returns the guarded nodes.

    onnxruntime's basic-level ``WeightBiasQuantization`` transformer quantizes the float32 weights
    of any such node that sits between a DequantizeLinear with a *scalar* scale and a
    QuantizeLinear (the usual place of a float node inside a quantized network), per tensor and
    silently: an excluded depthwise convolution then runs with per-tensor int8 weights, worse
    than if it had been quantized per channel (measured on the real SSDLite, BENCHMARKS.md:
    returning random convolutions to float dropped fidelity). Each such node gets its own copy
    of that DequantizeLinear with the scale and zero point repeated along the channel axis: the
    same values, but no longer scalar, so the transformer leaves the node alone.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from detzoo.onnxgraph import initializers, producers

    g = model.graph
    producer = producers(g)
    inits = initializers(g)
    shapes = {vi.name: vi.type.tensor_type.shape for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    new_nodes, guarded = {}, []
    for n in g.node:
        if n.name not in float_nodes or n.op_type not in WEIGHTED_OPS or not n.input:
            continue
        dq = producer.get(n.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[dq.input[1]])
        if scale.size != 1:
            continue
        shape = shapes.get(n.input[0])
        axis = 1  # channels (Conv) or columns (Gemm): any axis works, the values are all equal
        if shape is None or len(shape.dim) <= axis or not shape.dim[axis].HasField("dim_value") \
                or shape.dim[axis].dim_value < 2:
            continue
        c = shape.dim[axis].dim_value
        base = f"{n.name}/float_input"
        zp = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else None
        g.initializer.append(numpy_helper.from_array(np.full(c, scale.reshape(-1)[0], scale.dtype), base + "_scale"))
        inputs = [dq.input[0], base + "_scale"]
        if zp is not None:
            g.initializer.append(numpy_helper.from_array(np.full(c, zp.reshape(-1)[0], zp.dtype), base + "_zp"))
            inputs.append(base + "_zp")
        new_nodes.setdefault(dq.name, []).append(
            helper.make_node("DequantizeLinear", inputs, [base], name=base + "_dq", axis=axis))
        n.input[0] = base
        guarded.append(n.name)
    if new_nodes:
        ordered = []
        for n in g.node:
            ordered.append(n)
            ordered.extend(new_nodes.get(n.name, []))
        del g.node[:]
        g.node.extend(ordered)
    return guarded


STEM_MAX_CHANNELS = 4
STEM_WHY = ("image-facing convolution ({c} input channels): onnxruntime's int8 kernels gain nothing over so few "
            "channels (the float stem measured faster here) and its error reaches every later layer")


def stem_exclusions(model, plan: PrecisionPlan) -> dict[str, str]:
    """Network convolutions fed (almost) directly by the image, with their Clip/Relu: they stay float.

    Measured on the real SSDLite (BENCHMARKS.md): keeping the 3-channel stem convolution float made
    the int8 model faster (its QLinearConv was the slowest node) at equal fidelity.
    """
    from detzoo.onnxgraph import consumers as consumer_map, initializers, producers
    from detzoo.quantize.plan import Region

    inits = initializers(model.graph)
    consumers = consumer_map(model.graph)
    producer = producers(model.graph)
    image_side = {i.name for i in model.graph.input} | {
        o for n in model.graph.node if plan.regions.get(n.name) == Region.PREPROCESSING for o in n.output}
    reduced = set(plan.reduced())
    out = {}
    for n in model.graph.node:
        if n.op_type != "Conv" or n.name not in reduced or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if n.input[0] not in image_side and n.input[0] in producer:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        channels = int(inits[n.input[1]].dims[1]) * group
        if channels <= STEM_MAX_CHANNELS:
            why = STEM_WHY.format(c=channels)
            out[n.name] = why
            for c in consumers.get(n.output[0], []):
                if c.op_type in ("Clip", "Relu") and c.name in reduced:
                    out[c.name] = why
    return out


def nonfinite_exclusions(model, plan: PrecisionPlan, tensors: list[str]) -> dict[str, str]:
    """node -> why, for every reduced node that reads or writes one of ``tensors`` (calibrated ranges
    that are not finite: ``calibration.nonfinite``)."""
    bad = set(tensors)
    reduced = set(plan.reduced())
    out = {}
    for n in model.graph.node:
        hit = sorted(bad & {*n.input, *n.output})
        if n.name in reduced and hit:
            out[n.name] = (f"its tensor {hit[0]} has no finite calibrated range (inf or NaN values, or empty "
                           "on every calibration image): no int8 scale represents it")
    return out


def int8_op_types(plan: PrecisionPlan) -> list[str]:
    return sorted({plan.op_types[n] for n in plan.reduced(INT8_OPS)})


def run(model_path: Path, plan: PrecisionPlan, settings: Int8Settings, cache_path: Path,
        out_path: Path, stats: dict | None = None) -> list[str]:
    """Write the QDQ model of ``model_path`` to ``out_path`` from calibrated ranges; returns the quantized nodes.

    onnxruntime places the Q/DQ pairs and calibrated activation ranges; the weights and biases are
    then rewritten by ``detzoo.quantize.weights`` (saturation-safe bit widths, bias correction and
    rounding from the layer ``stats``). Float network nodes are guarded so that onnxruntime keeps
    them float (``guard_float_nodes``).
    """
    from detzoo.quantize.weights import requantize_weights

    import onnx
    from onnxruntime.quantization import quantize_static

    nodes = plan.reduced(INT8_OPS)
    if not nodes:  # quantize_static reads an empty list as "quantize every node"
        raise DetzooError("the precision plan leaves no network node to quantize")
    with _quiet():
        quantize_static(str(model_path), str(out_path), calibration_data_reader=None,
                        calibration_cache_path=str(cache_path), nodes_to_quantize=nodes,
                        nodes_to_exclude=sorted(plan.excluded), op_types_to_quantize=int8_op_types(plan),
                        extra_options=settings.extra_options(), **settings.quantize_kwargs())
    model = onnx.load(str(out_path))
    requantize_weights(model, onnx.load(str(model_path)), settings.weight_config, stats)
    float_nodes = set(plan.network) - set(nodes)
    if float_nodes:
        guard_float_nodes(model, float_nodes)
    onnx.save(model, str(out_path))
    return nodes




@contextlib.contextmanager
def _quiet():
    """quantize_static logs a pre-processing hint and per-weight warnings on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
