"""``detzoo add``: bring a model made elsewhere (an ONNX, or a TFLite such as the zoo's int8) into an
entry as one more variant, so ``detzoo verify`` measures it on the same images beside the others.

A model from elsewhere is untrusted and of unknown shape, so before anything is written it is
scanned for unsafe ops, its IO is checked against the detection contract, and it is run once on a
demo frame. Only then are the copied file and the manifest committed together: a refused model
leaves the entry byte for byte as it was.

Owns: checking an outside model and committing it, with the manifest, as one variant of an
existing entry. Does not touch: the other variants' files, conversion, quantization or any
measurement (``detzoo verify`` measures the new variant).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detzoo.errors import DetzooError, first_line
from detzoo.fsutil import sha256_file, staging
from detzoo.manifest import Manifest, Variant
from detzoo.source import OUTPUT_ROLES, TFLITE_MAGIC, IOSpec, TensorSpec, tflite_precision

PRECISIONS = ("fp32", "fp16", "int8")
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_INT8_OPS = ("QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger")
EXPECTED_OUTPUTS = ("num_detections [N], detection_boxes [N, K, 4], detection_scores [N, K], "
                    "detection_classes [N, K]")


@dataclass
class AddResult:
    manifest: Manifest
    variant: Variant
    path: Path          # the copy inside the entry
    replaced: bool      # --force replaced a variant of that name


def add(folder, model, variant: str, force: bool = False, allow_unsafe_ops: bool = False,
        precision: str | None = None) -> AddResult:
    """Copy ``model`` into ``folder`` as variant ``variant`` after checking it is a safe, working detector."""
    folder, model = Path(folder), Path(model)
    if variant == "source":
        raise DetzooError("--variant 'source' names the entry's source model in reports: expected another name")
    if not _PLAIN.fullmatch(variant or ""):
        raise DetzooError(f"--variant {variant!r} is not a plain name: expected letters, digits, '.', '_', '+' "
                          "or '-', not starting with '.', at most 64 characters")
    if precision is not None and precision not in PRECISIONS:
        raise DetzooError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if not folder.is_dir():
        raise DetzooError(f"entry folder not found: {folder} (expected a zoo entry holding manifest.json)")
    manifest = Manifest.load(folder)
    if not model.is_file():
        raise DetzooError(f"model not found: {model} (expected an .onnx or .tflite file)" if not model.exists()
                          else f"{model} is a folder: expected an .onnx or .tflite model file")
    old = manifest.variants.get(variant)
    if old is not None and not force:
        raise DetzooError(f"{folder} already has variant {variant!r} ({old.file}); pass --force to replace it, "
                          "or choose another --variant")
    data = model.read_bytes()
    fmt = "tflite" if model.suffix.lower() == ".tflite" or data[4:8] == TFLITE_MAGIC else (
        "onnx" if model.suffix.lower() == ".onnx" else None)
    if fmt is None:
        raise DetzooError(f"{model.name} is neither .onnx nor .tflite: expected an ONNX model (.onnx) or a "
                          "TFLite flatbuffer (.tflite)")
    file = f"{manifest.name}.{variant}.{fmt}"
    clash = [v.name for v in manifest.variants.values() if v.file == file and v.name != variant]
    if clash:
        raise DetzooError(f"{file} is already the file of variant {clash[0]!r}; choose another --variant")

    # Checked in a private folder under the user's file name, so every message names what they gave.
    with tempfile.TemporaryDirectory(prefix="detzoo-add-") as tmp:
        checked = Path(tmp) / model.name
        checked.write_bytes(data)
        check = _check_onnx if fmt == "onnx" else _check_tflite
        io, guessed, opset, smoke = check(checked, manifest, variant, allow_unsafe_ops)

    from detzoo.contract import keeps_contract

    contract = keeps_contract(io)
    digest = hashlib.sha256(data).hexdigest()
    settings = {"added_from": str(model.resolve()), "added_sha256": digest, "provenance": "detzoo add",
                "allow_unsafe_ops": allow_unsafe_ops, "contract": contract,
                "precision_from": "--precision" if precision else "guessed from the model"}
    if not contract:
        settings["contract_reason"] = _contract_reason(fmt, io)
    with staging(folder, "." + fmt) as tmp:
        tmp.write_bytes(data)
        if sha256_file(tmp) != digest:
            raise DetzooError(f"the copy of {model.name} in {folder} differs from the original (disk full?)")
        v = Variant(name=variant, file=file, precision=precision or guessed, sha256=digest, size=len(data),
                    opset=opset, parent=None, settings=settings, checks={"smoke": smoke}, format=fmt,
                    io=io.to_dict())
        manifest.variants[variant] = v
        manifest.save(folder, {file: tmp})  # the file and the manifest that records it, in one commit
    if old is not None and old.file != file and all(o.file != old.file for o in manifest.variants.values()):
        (folder / old.file).unlink(missing_ok=True)
    return AddResult(manifest, v, folder / file, old is not None)


# --- ONNX -------------------------------------------------------------------------------------

def _shape(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _check_onnx(path: Path, manifest: Manifest, variant: str, allow_unsafe_ops: bool):
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import TensorProto

    from detzoo.contract import fixed_size_io, value_dims
    from detzoo.onnxgraph import walk_graphs
    from detzoo.runners import OrtRunner
    from detzoo.safety import scan_onnx

    try:
        model = onnx.load_from_string(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as e:
        raise DetzooError(f"{path.name} is not a readable ONNX model ({first_line(e)}): expected an ONNX "
                          "ModelProto") from None
    if not model.graph.node:
        raise DetzooError(f"{path.name} holds no ONNX graph nodes: expected an ONNX detection model")
    if not allow_unsafe_ops:
        scan_onnx(model, f"ONNX model {path.name}")
    if any(t.data_location == TensorProto.EXTERNAL for g in walk_graphs(model.graph) for t in g.initializer):
        raise DetzooError(f"{path.name} keeps its weights in external data files: expected a self-contained .onnx")

    g = model.graph
    weights = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    if len(inputs) != 1:
        raise DetzooError(f"{path.name} takes {len(inputs)} inputs {[i.name for i in inputs]}: expected one "
                          "image input uint8 [N, H, W, 3]")
    inp = inputs[0]
    dims, elem = value_dims(inp), inp.type.tensor_type.elem_type
    if elem != TensorProto.UINT8 or len(dims) != 4 or dims[3] not in (3, None):
        raise DetzooError(f"{path.name} input {inp.name} is {TensorProto.DataType.Name(elem).lower()} "
                          f"{_shape(dims)}: expected uint8 [N, H, W, 3] (the zoo feeds uint8 image_tensor:0)")
    outs = list(g.output)
    ranks = [len(value_dims(o)) if o.type.tensor_type.HasField("shape") else None for o in outs[:4]]
    if len(outs) < 4 or any(r not in (None, want) for r, want in zip(ranks, (1, 3, 2, 2))) or (
            ranks[1] == 3 and value_dims(outs[1])[2] not in (4, None)):
        got = ", ".join(f"{o.name} {_shape(value_dims(o))}" for o in outs[:6])
        raise DetzooError(f"{path.name} does not give detections: its outputs are {got}; expected at least 4, "
                          f"first {EXPECTED_OUTPUTS}")

    spec = TensorSpec(inp.name, "uint8", dims)
    d = manifest.io.to_dict()
    d.update(input=asdict(spec), outputs=dict(zip(OUTPUT_ROLES, (o.name for o in outs[:4]))), resize=None,
             resize_with="tf")
    io = IOSpec.from_dict(d)
    if spec.fixed_hw:  # fed as the zoo feeds fixed-size variants: resized with OpenCV first
        io = fixed_size_io(io, *spec.fixed_hw)
        io.input.shape = dims
    smoke = _smoke(OrtRunner(path, io, label=variant, allow_unsafe_ops=allow_unsafe_ops), path.name)

    ops = {n.op_type for sub in walk_graphs(g) for n in sub.node}
    if any(op in _INT8_OPS or op.startswith("QLinear") for op in ops):
        guessed = "int8"
    elif any(t.data_type == TensorProto.FLOAT16 for sub in walk_graphs(g) for t in sub.initializer):
        guessed = "fp16"
    else:
        guessed = "fp32"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return io, guessed, opset, smoke


# --- TFLite -----------------------------------------------------------------------------------

def _check_tflite(path: Path, manifest: Manifest, variant: str, allow_unsafe_ops: bool):
    from detzoo.convert.iodetect import detect_io
    from detzoo.convert.loading import load_model_graph
    from detzoo.runners import TFLiteRunner
    from detzoo.source import open_source

    with open_source(path) as src:
        try:  # convert's loading: interpreter, unsafe-op scan, custom ops and post-processing attributes
            interp = load_model_graph(src, allow_unsafe_ops)
        except DetzooError as e:
            if "not a loadable TFLite model" not in str(e):
                raise
            raise DetzooError(f"{e}; expected a TFLite flatbuffer (.tflite)") from None
        try:  # fixed size resized by the caller, class_offset 1 after post-processing
            io = detect_io(src, graph=interp)
        except DetzooError as e:  # its hint names convert's --output, which add has not
            raise DetzooError(f"{str(e).split('; pass --')[0]}: expected a detector giving {EXPECTED_OUTPUTS} "
                              "(or ending in TFLite_Detection_PostProcess)") from None
    io.label_map = io.label_map or manifest.io.label_map
    io.num_classes = io.num_classes or manifest.io.num_classes
    smoke = _smoke(TFLiteRunner(path, io, label=variant, allow_unsafe_ops=allow_unsafe_ops), path.name)
    return io, tflite_precision(interp), None, smoke


# --- shared -----------------------------------------------------------------------------------

def _smoke(runner, name: str) -> dict:
    """Run once on a demo frame: a model can declare detection-shaped outputs and still give none."""
    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.runners import preprocess

    image_path = list_images(demo_dir("eval"))[0]
    image = decode_image(image_path)
    with runner:
        try:
            raw = [np.asarray(x) for x in runner.infer(preprocess(image, runner.io))]
        except DetzooError:
            raise
        except Exception as e:  # the runtimes raise their own exception types
            raise DetzooError(f"{name} fails on demo image {image_path.name}: {first_line(e)}; expected a model "
                              f"that runs on one image and gives {EXPECTED_OUTPUTS}") from None
    problem = _output_problem(raw)
    if problem:
        raise DetzooError(f"{name} does not give detections on demo image {image_path.name}: {problem}; "
                          f"expected {EXPECTED_OUTPUTS}")
    n = int(raw[0].reshape(-1)[0])
    return {"image": image_path.name, "output_shapes": [list(x.shape) for x in raw[:4]], "detections": n,
            "max_score": round(float(raw[2].reshape(-1)[:n].max()), 6) if n else None}


def _output_problem(raw: list) -> str | None:
    if len(raw) < 4:
        return f"it gives {len(raw)} outputs"
    num, boxes, scores, classes = raw[:4]
    if boxes.ndim != 3 or boxes.shape[0] != 1 or boxes.shape[2] != 4:
        return f"detection_boxes has shape {list(boxes.shape)}"
    for role, a in (("detection_scores", scores), ("detection_classes", classes)):
        if a.shape != boxes.shape[:2]:
            return f"{role} has shape {list(a.shape)} beside boxes {list(boxes.shape)}"
    if num.size != 1:
        return f"num_detections has shape {list(num.shape)} for one image"
    n, k = float(num.reshape(-1)[0]), boxes.shape[1]
    if not (np.isfinite(n) and 0 <= n <= k and n == int(n)):
        return f"num_detections is {n:g} with K = {k} boxes"
    n = int(n)
    s = scores.reshape(-1)[:n]
    if not np.all(np.isfinite(s)) or (s.size and (s.min() < 0 or s.max() > 1 + 1e-6)):
        return f"scores of the {n} detections range over [{s.min():g}, {s.max():g}], not [0, 1]"
    if not (np.all(np.isfinite(boxes[0, :n])) and np.all(np.isfinite(classes.reshape(-1)[:n]))):
        return "boxes or classes of the detections are not finite"
    return None


def _contract_reason(fmt: str, io: IOSpec) -> str:
    """One line saying how the model's IO differs from the zoo's (verify feeds it its own way)."""
    parts = [f"{'TFLite' if fmt == 'tflite' else 'ONNX'} IO: {io.input.name} {io.input.dtype} {_shape(io.input.shape)}"]
    if io.resize:
        how = "OpenCV" if io.resize_with == "cv2" else "TF bilinear"
        parts.append(f"fixed size {io.resize[0]}x{io.resize[1]} (resized by the caller, {how})")
    if io.input.dtype.startswith("float"):
        parts.append(f"float input (pixel * {io.scale:g} + {io.offset:g})")
    if io.class_offset:
        parts.append(f"{'0-based classes' if io.class_offset == 1 else f'classes raw + {io.class_offset}'}")
    if io.input.shape and isinstance(io.input.shape[0], int):
        parts.append(f"batch fixed to {io.input.shape[0]}")
    return ", ".join(parts)
