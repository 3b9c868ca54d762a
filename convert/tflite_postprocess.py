"""``TFLite_Detection_PostProcess`` as ONNX ops that compute what the TFLite kernel computes.

tf2onnx replaces the op with one ``NonMaxSuppression`` per class and calls fast NMS an
approximation of it. Here the op becomes a placeholder during conversion (``placeholder_handler``)
and is then expanded (``expand``) into the kernel's own algorithm
(tensorflow/lite/kernels/detection_postprocess.cc):

* box decoding in double, cast to float, then corners in float, as the kernel does;
* scores ``>=`` the score threshold are kept (onnxruntime's NonMaxSuppression keeps ``>``);
* candidates are ordered by a stable descending sort (ties: lower anchor first, as the kernel's
  ``std::stable_sort``). The ONNX spec leaves the order of equal scores in NonMaxSuppression open
  (onnxruntime's kernel long compared scores only), so it is fed each candidate's rank (unique,
  exact in float32) instead of its score and only does the greedy IoU pass, whose arithmetic is the
  kernel's (``IoU > threshold`` suppresses);
* fast NMS (``use_regular_nms`` false): per anchor the best ``max_classes_per_detection`` classes
  (one: the first maximum, as ``ArgMaxVector``), class-agnostic NMS on the best score,
  ``max_detections`` anchors, each repeated per class; ``num_detections`` counts anchors;
* regular NMS: per class NMS keeping ``detections_per_class``, merged by score into
  ``max_detections``.

What remains different: where the kernel uses ``std::partial_sort`` (regular NMS's merge across
classes; fast NMS with ``max_classes_per_detection`` > 1), equal scores come out in libstdc++'s
heap order, here in stable order. Same detections and scores, in another order among exact ties
(and at a ``max_detections`` cut that falls inside a tie, another of the tied detections).
Unwritten output rows (fast NMS) are garbage in TFLite and zeros here.

Owns: reading the op's attributes and output quantization from the TFLite flatbuffer, and its ONNX
expansion. Does not touch: files, the rest of the graph (tf2onnx converts it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detzoo.errors import DetzooError

OP = "TFLite_Detection_PostProcess"
DOMAIN = "ai.detzoo.tflite"
PLACEHOLDER = "TFLiteDetectionPostProcess"
_INT_ATTRS = ("max_detections", "max_classes_per_detection", "detections_per_class", "num_classes")
_FLOAT_ATTRS = ("nms_score_threshold", "nms_iou_threshold", "y_scale", "x_scale", "h_scale", "w_scale")


@dataclass(frozen=True)
class PostProcessAttrs:
    """The op's attributes with the kernel's defaults (detections_per_class 100, fast NMS)."""

    max_detections: int
    max_classes_per_detection: int
    num_classes: int
    nms_score_threshold: float
    nms_iou_threshold: float
    y_scale: float
    x_scale: float
    h_scale: float
    w_scale: float
    detections_per_class: int = 100
    use_regular_nms: bool = False

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "PostProcessAttrs":
        missing = [k for k in (*_INT_ATTRS[:2], "num_classes", *_FLOAT_ATTRS) if k not in d]
        if missing:
            raise DetzooError(f"{where}: {OP} lacks attributes {missing}; expected the OD API's attributes")
        kw = {k: int(d[k]) for k in _INT_ATTRS if d.get(k) is not None}
        kw.update({k: float(d[k]) for k in _FLOAT_ATTRS})
        kw["use_regular_nms"] = bool(d.get("use_regular_nms") or False)
        return cls(**kw)

    @property
    def output_rows(self) -> int:
        return self.max_detections * self.max_classes_per_detection

    def validate(self, where: str, anchors: int | None = None, class_columns: int | None = None,
                 box_columns: int | None = None) -> None:
        """Refuse what the kernel refuses or leaves undefined, naming the attribute."""
        def bad(what, expected):
            raise DetzooError(f"{where}: {OP} has {what}; expected {expected}")

        if self.num_classes < 1:
            bad(f"num_classes {self.num_classes}", ">= 1")
        if self.max_detections < 1:
            bad(f"max_detections {self.max_detections}", ">= 1")
        if not 1 <= self.max_classes_per_detection <= self.num_classes:
            bad(f"max_classes_per_detection {self.max_classes_per_detection}",
                f"between 1 and num_classes ({self.num_classes})")
        if self.use_regular_nms and self.detections_per_class < 1:
            bad(f"detections_per_class {self.detections_per_class}", ">= 1 with regular NMS")
        if not 0 < self.nms_iou_threshold <= 1:
            bad(f"nms_iou_threshold {self.nms_iou_threshold:g}", "in (0, 1]")
        if not math.isfinite(self.nms_score_threshold):
            bad(f"nms_score_threshold {self.nms_score_threshold}", "a finite number")
        for k in ("y_scale", "x_scale", "h_scale", "w_scale"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                bad(f"{k} {v:g}", "a finite number > 0")
        if class_columns is not None and class_columns - self.num_classes not in (0, 1):
            bad(f"{class_columns} score columns for num_classes {self.num_classes}",
                "num_classes columns, or one more for the background")
        if box_columns is not None and box_columns < 4:
            bad(f"box encodings of {box_columns} values", "at least 4 (y, x, h, w)")
        if anchors is not None and anchors < 1:
            bad(f"{anchors} anchors", "at least one")


def read_attrs(tflite_bytes: bytes, where: str) -> list[tuple[PostProcessAttrs, list]]:
    """Each post-processing op's attributes and its input shapes, read from the flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(tflite_bytes, 0)
    found = []
    for gi in range(model.SubgraphsLength()):
        g = model.Subgraphs(gi)
        for oi in range(g.OperatorsLength()):
            op = g.Operators(oi)
            code = model.OperatorCodes(op.OpcodeIndex())
            if (code.CustomCode() or b"").decode() != OP:
                continue
            opts = bytes(op.CustomOptionsAsNumpy()) if op.CustomOptionsLength() else b""
            try:
                d = _flex(opts)
            except Exception:  # a malformed flexbuffer is the model's problem, said in one line
                raise DetzooError(f"{where}: the attributes of {OP} are not a readable flexbuffer") from None
            shapes = [list(g.Tensors(op.Inputs(i)).ShapeAsNumpy()) if g.Tensors(op.Inputs(i)).ShapeLength()
                      else [] for i in range(op.InputsLength())]
            found.append((PostProcessAttrs.from_dict(d, where), shapes))
    return found


def custom_ops(tflite_bytes: bytes) -> list[str]:
    """Names of the custom ops a TFLite model uses (Flex ops are TensorFlow ops, not listed)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(tflite_bytes, 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    names = [(c.CustomCode() or b"").decode(errors="replace") for c in codes
             if max(c.BuiltinCode(), c.DeprecatedBuiltinCode()) == schema.BuiltinOperator.CUSTOM]
    return sorted({n for n in names if not n.startswith("Flex")})


def check_tflite(tflite_bytes: bytes, where: str) -> list[PostProcessAttrs]:
    """Refuse custom ops detzoo cannot convert and post-processing attributes the kernel would
    reject or leave undefined; returns each post-processing op's attributes. Call it after the
    interpreter has verified the flatbuffer."""
    other = [n for n in custom_ops(tflite_bytes) if n != OP]
    if other:
        raise DetzooError(f"{where} uses the custom op {other[0]!r}; detzoo converts TFLite models whose "
                          f"only custom op is {OP}")
    out = []
    for attrs, shapes in read_attrs(tflite_bytes, where):
        if len(shapes) != 3:
            raise DetzooError(f"{where}: {OP} has {len(shapes)} inputs; expected 3 (box encodings, "
                              "class predictions, anchors)")
        box, cls, anc = shapes
        if len(box) != 3 or len(cls) != 3 or len(anc) != 2:
            raise DetzooError(f"{where}: {OP} inputs have shapes {box}, {cls}, {anc}; expected "
                              "[1, anchors, 4], [1, anchors, classes(+1)], [anchors, 4]")
        attrs.validate(where, anchors=int(box[1]), class_columns=int(cls[2]), box_columns=int(box[2]))
        if not (int(box[1]) == int(cls[1]) == int(anc[0])):
            raise DetzooError(f"{where}: {OP} inputs disagree on the number of anchors "
                              f"({box[1]}, {cls[1]}, {anc[0]}); expected one count")
        out.append(attrs)
    return out


# --- conversion -----------------------------------------------------------------------------

def placeholder_handler(ctx, node, name, args):
    """tf2onnx custom-op handler: keep the op (and its attributes) as a node of our own domain."""
    node.type = PLACEHOLDER
    node.domain = DOMAIN


def tf2onnx_handlers() -> dict:
    return {f"TFL_{OP}": (placeholder_handler, [])}


def _attr_dict(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def expand(model):
    """Replace every placeholder node of ``model`` by the exact post-processing."""
    import onnx

    graph = model.graph
    for i, node in reversed(list(enumerate(graph.node))):
        if node.domain != DOMAIN:
            continue
        d = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in _attr_dict(node).items()}
        attrs = PostProcessAttrs.from_dict(d, "converted model")
        nodes, inits = postprocess_nodes(attrs, list(node.input), list(node.output), prefix=f"{node.name}/")
        del graph.node[i]
        for k, n in enumerate(nodes):
            graph.node.insert(i + k, n)
        graph.initializer.extend(inits)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.checker.check_model(model)
    return model


class _B:
    """A tiny node builder: unique names under one prefix, constants as initializers."""

    def __init__(self, prefix):
        self.prefix, self.nodes, self.inits, self.k = prefix, [], [], 0

    def name(self, stem):
        self.k += 1
        return f"{self.prefix}{stem}_{self.k}"

    def const(self, value, dtype, stem="c"):
        from onnx import numpy_helper

        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def op(self, op_type, inputs, stem=None, outputs=1, **attrs):
        from onnx import helper

        outs = [self.name(stem or op_type) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs


def _decode(b: _B, enc, anchors, a: PostProcessAttrs):
    """[A, 4] corners: centre and half size in double, cast to float, corners in float."""
    from onnx import TensorProto

    enc4 = b.op("Slice", [enc, b.const([0], np.int64), b.const([4], np.int64), b.const([1], np.int64)])
    ed = b.op("Cast", [enc4], to=TensorProto.DOUBLE)
    ad = b.op("Cast", [anchors], to=TensorProto.DOUBLE)
    ey, ex, eh, ew = b.op("Split", [ed, b.const([1, 1, 1, 1], np.int64)], outputs=4, axis=1)
    ay, ax, ah, aw = b.op("Split", [ad, b.const([1, 1, 1, 1], np.int64)], outputs=4, axis=1)

    def centre(e, scale, size, origin):  # e / scale * size + origin, left to right
        return b.op("Add", [b.op("Mul", [b.op("Div", [e, b.const(scale, np.float64)]), size]), origin])

    def half(e, scale, size):  # 0.5 * exp(e / scale) * size
        return b.op("Mul", [b.op("Mul", [b.const(0.5, np.float64),
                                         b.op("Exp", [b.op("Div", [e, b.const(scale, np.float64)])])]), size])

    f = lambda t: b.op("Cast", [t], to=TensorProto.FLOAT)  # noqa: E731
    yc, xc = f(centre(ey, a.y_scale, ah, ay)), f(centre(ex, a.x_scale, aw, ax))
    hh, hw = f(half(eh, a.h_scale, ah)), f(half(ew, a.w_scale, aw))
    return b.op("Concat", [b.op("Sub", [yc, hh]), b.op("Sub", [xc, hw]), b.op("Add", [yc, hh]),
                           b.op("Add", [xc, hw])], axis=1)


def _exact_nms(b: _B, boxes, scores_ca, num_anchors, max_out: int, a: PostProcessAttrs):
    """Selected [S, 3] (0, class, anchor) of per-row greedy NMS on ``scores_ca`` [C, A], in the
    kernel's order: scores >= threshold, stable descending sort, IoU > threshold suppresses."""
    from onnx import TensorProto

    k = b.op("Reshape", [num_anchors, b.const([1], np.int64)])
    vals, order = b.op("TopK", [scores_ca, k], outputs=2, axis=1, largest=1, sorted=1)
    keep = b.op("GreaterOrEqual", [vals, b.const(np.float32(a.nms_score_threshold), np.float32)])
    # rank r -> A - r: unique, positive, exact in float32 (A < 2**24); dropped candidates -> 0
    pos = b.op("Range", [b.const(0, np.int64), num_anchors, b.const(1, np.int64)])
    rank = b.op("Cast", [b.op("Sub", [num_anchors, pos])], to=TensorProto.FLOAT)
    rank = b.op("Where", [keep, b.op("Unsqueeze", [rank, b.const([0], np.int64)]), b.const(0.0, np.float32)])
    zeros = b.op("ConstantOfShape", [b.op("Shape", [scores_ca])])  # float32 zeros by default
    ranks = b.op("ScatterElements", [zeros, order, rank], axis=1)
    return b.op("NonMaxSuppression", [
        b.op("Unsqueeze", [boxes, b.const([0], np.int64)]), b.op("Unsqueeze", [ranks, b.const([0], np.int64)]),
        b.const([max_out], np.int64), b.const([np.float32(a.nms_iou_threshold)], np.float32),
        b.const([0.5], np.float32)], center_point_box=0)


def _pad_rows(b: _B, t, rows: int, rank: int):
    """Pad ``t`` ([n, ...] of ``rank`` axes) with zeros to ``rows`` rows."""
    extra = b.op("Sub", [b.const([rows], np.int64), _dim(b, t, 0)])
    pads = b.op("Concat", [b.const([0] * rank, np.int64), extra, b.const([0] * (rank - 1), np.int64)], axis=0)
    return b.op("Pad", [t, pads])


def _dim(b: _B, t, axis: int):
    """[1] int64: the size of ``t`` along ``axis`` (Shape's start/end need opset 15)."""
    return b.op("Slice", [b.op("Shape", [t]), b.const([axis], np.int64), b.const([axis + 1], np.int64)])


def postprocess_nodes(a: PostProcessAttrs, inputs: list[str], outputs: list[str], prefix: str = "pp/"):
    """(nodes, initializers) computing the op's four outputs (boxes [1, D, 4], classes [1, D],
    scores [1, D], num_detections [1]; D = max_detections * max_classes_per_detection) from its
    three float inputs (box encodings [1, A, >=4], class predictions [1, A, C(+1)], anchors [A, 4])."""
    from onnx import TensorProto

    b = _B(prefix)
    enc_in, cls_in, anchors = inputs
    enc = b.op("Squeeze", [enc_in, b.const([0], np.int64)])
    scores_all = b.op("Squeeze", [cls_in, b.const([0], np.int64)])            # [A, C(+1)]
    ncols = _dim(b, scores_all, 1)
    scores = b.op("Slice", [scores_all, b.op("Sub", [ncols, b.const([a.num_classes], np.int64)]),
                            ncols, b.const([1], np.int64)])                   # [A, C]: background dropped
    num_anchors = _dim(b, scores, 0)                                          # [1]
    n_scalar = b.op("Squeeze", [num_anchors, b.const([0], np.int64)])
    boxes = _decode(b, enc, anchors, a)                                       # [A, 4]
    d = a.output_rows
    if a.use_regular_nms:
        sel = _exact_nms(b, boxes, b.op("Transpose", [scores], perm=[1, 0]), n_scalar,
                         a.detections_per_class, a)
        cls_idx = b.op("Squeeze", [b.op("Slice", [sel, b.const([1], np.int64), b.const([2], np.int64),
                                                  b.const([1], np.int64)]), b.const([1], np.int64)])
        anchor_idx = b.op("Squeeze", [b.op("Slice", [sel, b.const([2], np.int64), b.const([3], np.int64),
                                                     b.const([1], np.int64)]), b.const([1], np.int64)])
        picked = b.op("GatherND", [scores, b.op("Concat", [
            b.op("Unsqueeze", [anchor_idx, b.const([1], np.int64)]),
            b.op("Unsqueeze", [cls_idx, b.const([1], np.int64)])], axis=1)])  # [P], class-major order
        p = _dim(b, picked, 0)
        n_out = b.op("Min", [p, b.const([a.max_detections], np.int64)])
        top, idx = b.op("TopK", [picked, n_out], outputs=2, axis=0, largest=1, sorted=1)
        out_boxes = b.op("Gather", [boxes, b.op("Gather", [anchor_idx, idx], axis=0)], axis=0)
        out_classes = b.op("Cast", [b.op("Gather", [cls_idx, idx], axis=0)], to=TensorProto.FLOAT)
        out_scores = top
        count = n_out
    else:
        kc = a.max_classes_per_detection
        if kc == 1:
            best_cls = b.op("ArgMax", [scores], axis=1, keepdims=1, select_last_index=0)      # [A, 1]
            best = b.op("GatherElements", [scores, best_cls], axis=1)                         # [A, 1]
        else:
            best, best_cls = b.op("TopK", [scores, b.const([kc], np.int64)], outputs=2, axis=1,
                                  largest=1, sorted=1)                                        # [A, kc]
        top1 = b.op("Transpose", [b.op("Slice", [best, b.const([0], np.int64), b.const([1], np.int64),
                                                 b.const([1], np.int64)])], perm=[1, 0])       # [1, A]
        sel = _exact_nms(b, boxes, top1, n_scalar, a.max_detections, a)
        anchor_idx = b.op("Squeeze", [b.op("Slice", [sel, b.const([2], np.int64), b.const([3], np.int64),
                                                     b.const([1], np.int64)]), b.const([1], np.int64)])
        m = _dim(b, anchor_idx, 0)
        flat = b.op("Concat", [b.op("Mul", [m, b.const([kc], np.int64)])], axis=0)
        out_boxes = b.op("Reshape", [b.op("Expand", [
            b.op("Unsqueeze", [b.op("Gather", [boxes, anchor_idx], axis=0), b.const([1], np.int64)]),
            b.const([1, kc, 1], np.int64)]), b.op("Concat", [flat, b.const([4], np.int64)], axis=0)])
        out_classes = b.op("Cast", [b.op("Reshape", [b.op("Gather", [best_cls, anchor_idx], axis=0), flat])],
                           to=TensorProto.FLOAT)
        out_scores = b.op("Reshape", [b.op("Gather", [best, anchor_idx], axis=0), flat])
        count = m
    ob, oc, osc, on = outputs
    b.op("Unsqueeze", [_pad_rows(b, out_boxes, d, 2), b.const([0], np.int64)], outputs=[ob])
    b.op("Unsqueeze", [_pad_rows(b, out_classes, d, 1), b.const([0], np.int64)], outputs=[oc])
    b.op("Unsqueeze", [_pad_rows(b, out_scores, d, 1), b.const([0], np.int64)], outputs=[osc])
    b.op("Cast", [count], outputs=[on], to=TensorProto.FLOAT)
    return b.nodes, b.inits


# --- the source's own output quantization --------------------------------------------------

@dataclass(frozen=True)
class OutputSteps:
    """One quantization step of the post-processing's inputs, in output units: scores as they
    are, boxes as the largest move one step of a box encoding makes to a decoded corner (centre
    and half size both move) over the model's anchors, in units of image size."""

    score_step: float
    box_step: float
    box_encoding_step: float
    dtypes: str

    def to_json(self) -> dict:
        return {"score_step": self.score_step, "box_step": self.box_step,
                "box_encoding_step": self.box_encoding_step, "dtypes": self.dtypes}


def _tfl_types() -> dict:
    """TFLite TensorType -> numpy dtype, for the types a detector's constants use."""
    from tensorflow.lite.python import schema_py_generated as schema

    t = schema.TensorType
    return {t.FLOAT32: np.float32, t.FLOAT16: np.float16, t.INT32: np.int32, t.UINT8: np.uint8,
            t.INT8: np.int8, t.INT16: np.int16}


def _integer(tfl_type) -> bool:
    from tensorflow.lite.python import schema_py_generated as schema

    return tfl_type in (schema.TensorType.UINT8, schema.TensorType.INT8, schema.TensorType.INT16)


def _tensor_values(model, g, ti):
    """A constant tensor's values as float (dequantized), or None when it is not a constant."""
    t = g.tensors[ti]
    buf = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
    types = _tfl_types()
    if buf is None or len(buf) == 0 or t.type not in types:
        return None
    v = np.frombuffer(bytes(bytearray(buf)), dtype=types[t.type]).astype(np.float64)
    q = t.quantization
    if q is not None and q.scale is not None and len(q.scale) == 1 and _integer(t.type):
        v = (v - float(q.zeroPoint[0])) * float(q.scale[0])
    return v.reshape(list(t.shape)) if t.shape is not None else v


def _quant_scale(model, g, ti, producers):
    """Scale of ``ti`` if it is integer-quantized, else of the integer tensor a DEQUANTIZE made it
    from (MLIR-quantized models feed the custom op float through DEQUANTIZE); None for float."""
    t = g.tensors[ti]
    q = t.quantization
    if _integer(t.type) and q is not None and q.scale is not None and len(q.scale):
        return float(q.scale[0]), np.dtype(_tfl_types()[t.type]).name
    op = producers.get(ti)
    code = model.operatorCodes[op.opcodeIndex] if op is not None else None
    from tensorflow.lite.python import schema_py_generated as schema

    if code is not None and max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE:
        return _quant_scale(model, g, op.inputs[0], producers)
    return None


def output_steps(tflite_bytes: bytes) -> OutputSteps | None:
    """The post-processing's input quantization steps, or None for a float model."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite_bytes, 0))
    for g in model.subgraphs:
        producers = {o: op for op in g.operators for o in op.outputs}
        for op in g.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if (code.customCode or b"").decode(errors="replace") != OP:
                continue
            enc, cls = (_quant_scale(model, g, i, producers) for i in op.inputs[:2])
            if enc is None or cls is None:
                return None
            attrs = PostProcessAttrs.from_dict(_flex(bytes(bytearray(op.customOptions))), "model")
            anchor_ti = op.inputs[2]
            anc = _tensor_values(model, g, anchor_ti)
            if anc is None and anchor_ti in producers:
                anc = _tensor_values(model, g, producers[anchor_ti].inputs[0])
            h, w = (float(np.max(anc[:, 2])), float(np.max(anc[:, 3]))) if anc is not None and anc.ndim == 2 \
                else (1.0, 1.0)
            per_step = max(h / attrs.y_scale, w / attrs.x_scale) + 0.5 * max(h / attrs.h_scale, w / attrs.w_scale)
            return OutputSteps(score_step=cls[0], box_step=enc[0] * per_step, box_encoding_step=enc[0],
                               dtypes=f"box encodings {enc[1]}, class predictions {cls[1]}")
    return None


def _flex(data: bytes) -> dict:
    from flatbuffers import flexbuffers

    return flexbuffers.Loads(data) if data else {}
