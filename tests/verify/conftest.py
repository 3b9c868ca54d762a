"""Fixtures for verify: the synthetic shapes set, the tiny TF detectors converted once, a worse twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHIFT = (3, 2)  # px added to every ground-truth box (x, y): the detector's mAP falls well below 1


@pytest.fixture(scope="session")
def shifted_annotations(shapes) -> Path:
    """The same set with every box moved by SHIFT: a perfect detector scores a real, non-trivial mAP."""
    _, ann = shapes
    d = json.loads(ann.read_text())
    for a in d["annotations"]:
        a["bbox"] = [a["bbox"][0] + SHIFT[0], a["bbox"][1] + SHIFT[1], a["bbox"][2], a["bbox"][3]]
    out = ann.parent / "shifted.json"
    out.write_text(json.dumps(d))
    return out


def add_shifted_variant(entry: Path, name: str = "shifted", shift: float = -0.03) -> str:
    """Register a variant whose boxes are moved by ``shift`` (normalized): a known accuracy loss
    (negative: away from the SHIFT of the shifted annotations)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from detzoo.fsutil import sha256_file
    from detzoo.manifest import Manifest, Variant

    m = Manifest.load(entry)
    base = m.variants["fp32"]
    model = onnx.load(entry / base.file)
    g = model.graph
    boxes = g.output[1].name
    for node in g.node:
        node.output[:] = [o + "_raw" if o == boxes else o for o in node.output]
        node.input[:] = [i + "_raw" if i == boxes else i for i in node.input]
    g.initializer.append(numpy_helper.from_array(np.full([4], shift, np.float32), "detzoo_test_shift"))
    g.node.append(helper.make_node("Add", [boxes + "_raw", "detzoo_test_shift"], [boxes]))
    path = entry / f"{name}.onnx"
    onnx.save(model, path)
    m.variants[name] = Variant(name=name, file=path.name, precision="fp32", sha256=sha256_file(path),
                               size=path.stat().st_size, parent="fp32")
    m.save(entry)
    return name
