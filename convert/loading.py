"""Load a source model for inspection and conversion, scanning it for unsafe ops first.

Owns: scan-then-load for every source format. Does not touch: IO detection, conversion, the scans'
rules (detzoo.safety).
"""

from __future__ import annotations

from detzoo.errors import DetzooError
from detzoo import safety
from detzoo.source import ModelFormat, ModelSource, load_graph_def, load_saved_model_signature, tflite_interpreter


def load_model_graph(src: ModelSource, allow_unsafe_ops: bool = False):
    """GraphDef (frozen graph), (MetaGraphDef, signature) (SavedModel) or interpreter (TFLite)."""
    if src.format == ModelFormat.FROZEN_GRAPH:
        gd = load_graph_def(src.path)
        if not allow_unsafe_ops:
            safety.scan_graph_def(gd, f"graph {src.path.name}")
        return gd
    if src.format == ModelFormat.SAVED_MODEL:
        meta, sig = load_saved_model_signature(src.path)
        if not allow_unsafe_ops:
            safety.scan_saved_model(meta, f"SavedModel {src.path}")
        return meta, sig
    if src.format == ModelFormat.TFLITE:
        from detzoo.convert.tflite_postprocess import check_tflite

        interp = tflite_interpreter(src.path)
        if not allow_unsafe_ops:
            safety.scan_tflite(src.path, interp._get_ops_details())
        check_tflite(src.path.read_bytes(), src.path.name)
        return interp
    raise DetzooError(f"unsupported source format {src.format}")
