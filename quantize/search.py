"""Accuracy-aware int8: return the most sensitive quantized nodes to float until the drop fits the budget.

Sensitivity is per-tensor quantization error from onnxruntime's ``qdq_loss_debug``: both the
float and the QDQ model are run on a few calibration images with every activation exposed, and
each quantized node is scored by the noise its own quantization adds, i.e. the noise-to-signal
ratio of its output activation after QDQ plus that of its weights. Scoring local noise, not the
error accumulated from the input (which only grows with depth), points at the nodes whose ranges
int8 represents worst. The drop itself is always measured on the held-out check images.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detzoo.quantize.calibration import ImageReader, _quiet, model_input
from detzoo.quantize.plan import PrecisionPlan

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
    steps: list = field(default_factory=list)
    met: bool = False

    def to_json(self) -> dict:
        return {"max_drop_points": self.max_drop, "met": self.met, "steps": [s.to_json() for s in self.steps]}


def _nsr(sqnr_db: float) -> float:
    return float(10 ** (-sqnr_db / 10.0)) if np.isfinite(sqnr_db) else 0.0


def rank_sensitivity(float_path: Path, qdq_path: Path, plan: PrecisionPlan, quantized: list[str], images: list,
                     io) -> list[tuple[str, float]]:
    """Quantized compute nodes, most sensitive first, with their local noise-to-signal ratio."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                         compute_weight_error, create_activation_matching,
                                                         create_weight_matching,
                                                         modify_model_output_intermediate_tensors)

    fm = onnx.load(str(float_path))
    name = model_input(fm)[0]
    consumers: dict[str, list] = {}
    for n in fm.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    with tempfile.TemporaryDirectory(prefix="detzoo-rank-") as tmp, _quiet():
        fa, qa = Path(tmp) / "float_aug.onnx", Path(tmp) / "qdq_aug.onnx"
        modify_model_output_intermediate_tensors(str(float_path), str(fa))
        modify_model_output_intermediate_tensors(str(qdq_path), str(qa))
        f_act = collect_activations(str(fa), ImageReader(images, io, name))
        q_act = collect_activations(str(qa), ImageReader(images, io, name))
        act_err = compute_activation_error(create_activation_matching(q_act, f_act))
        w_err = compute_weight_error(create_weight_matching(str(float_path), str(qdq_path)))
    quantized_set = set(quantized)
    scores = []
    for node in quantized:
        n = next((m for m in fm.graph.node if m.name == node), None)
        if n is None or plan.op_types.get(node) in FOLLOWERS:
            continue
        out = n.output[0]
        # A removed Clip/Relu hands its output name to the quantized tensor: look one node further.
        follow = [c for c in consumers.get(out, []) if c.op_type in FOLLOWERS and c.name in quantized_set]
        tensor = follow[0].output[0] if follow and follow[0].output[0] in act_err else out
        nsr = _nsr(act_err.get(tensor, {}).get("qdq_err", np.inf))
        nsr += sum(_nsr(w_err[w]) for w in n.input[1:2] if w in w_err)
        scores.append((node, nsr))
    scores.sort(key=lambda s: -s[1])
    return scores


def followers_of(model, node: str, quantized: set[str]) -> list[str]:
    """The Clip/Relu that fused with ``node`` (returned to float together)."""
    outs = {o for n in model.graph.node if n.name == node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in FOLLOWERS and n.name in quantized
            and n.input and n.input[0] in outs]
