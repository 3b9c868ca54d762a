"""The prepared model both variants start from: the batch-1 pass, then onnxruntime's basic optimizations.

``quant_pre_process`` folds constants and BatchNormalization into Conv on the batch-1 model, whose
shapes are all static once the map_fn Loops are inlined (batch1.py). Owns that sequence and the
files it writes in the work folder (``batch1.onnx``, ``prepared.onnx``). Must not touch precision:
plan.py, fp16.py and int8.py start from its output.
"""

from __future__ import annotations

import contextlib
import io as _io
import warnings
from pathlib import Path

from detzoo.errors import DetzooError
from detzoo.quantize import batch1
from detzoo.quantize.install import sort_nodes
from detzoo.quantize.plan import ensure_node_names


def run(fp32: Path, work: Path) -> tuple[Path, batch1.Batch1Report, dict]:
    """Batch-1 specialization, then quant_pre_process; returns the prepared model's path, the batch-1
    report and what the manifest records of the optimization."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, report = batch1.run(onnx.load(str(fp32)))
    ensure_node_names(model)
    b1 = work / "batch1.onnx"
    onnx.save(model, str(b1))
    try:
        import sympy  # noqa: F401  (symbolic shape inference needs it)
        symbolic = True
    except ImportError:
        symbolic = False
    out = work / "prepared.onnx"
    with contextlib.redirect_stdout(_io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(b1), str(out), skip_symbolic_shape=not symbolic)
    if not out.is_file():
        raise DetzooError(f"onnxruntime could not optimize the batch-1 model of {fp32.name}")
    prepared = onnx.load(str(out))
    resorted = sort_nodes(prepared.graph)
    if ensure_node_names(prepared) or resorted:
        onnx.save(prepared, str(out))
    info = {"quant_pre_process": {"symbolic_shape_inference": symbolic, "ort_optimization": "basic",
                                  "note": None if symbolic else "sympy not installed: ONNX shape inference only "
                                  "(the batch-1 pass already makes every network shape static)"}}
    return out, report, info

