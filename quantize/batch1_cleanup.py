"""Cleanup for the batch-1 pass: dead nodes, shape arithmetic folded to constants, no-op Reshapes.

Owns ``remove_dead_nodes``, ``fold_known`` (nodes whose outputs batch1_known.py proved constant
become initializers) and ``drop_noop_reshapes``. Must not touch control flow: Loops are
batch1_inline.py's, and folding never replaces a Loop, If or Scan.
"""

from __future__ import annotations

import numpy as np

from detzoo.onnxgraph import subgraphs, walk_nodes
from detzoo.quantize.batch1_inline import rename_references
from detzoo.quantize.batch1_known import Known, static_shapes


def remove_dead_nodes(model) -> int:
    """Drop nodes (and initializers) no graph output depends on; returns how many nodes went."""
    g = model.graph

    def used_in_subgraphs(n) -> set[str]:
        return {i for sub in subgraphs(n) for m in walk_nodes(sub) for i in m.input}

    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
            needed.update(used_in_subgraphs(n))
    removed = len(g.node) - len(keep)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    vis = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vis)
    return removed


def fold_known(model, known: Known) -> int:
    """Replace nodes whose outputs are fully known (shape arithmetic) by initializers."""
    from onnx import numpy_helper

    g = model.graph
    outputs = {o.name for o in g.output}
    keep, folded = [], 0
    for n in g.node:
        vals = [known.values.get(o) for o in n.output]
        if (n.op_type not in ("Loop", "If", "Scan") and len(n.output) == 1 and n.output[0] not in outputs
                and isinstance(vals[0], (np.ndarray, np.generic)) and np.size(vals[0]) <= 1024):
            g.initializer.append(numpy_helper.from_array(np.asarray(vals[0]), n.output[0]))
            folded += 1
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    return folded


def drop_noop_reshapes(model) -> int:
    """Bypass Reshapes whose static input and output shapes are equal.

    tf2onnx wraps the 1x1 feature maps' BatchNormalization in such Reshapes, which keeps
    onnxruntime from folding the BatchNormalization into the convolution before it.
    """
    g = model.graph
    shapes = static_shapes(model)
    outputs = {o.name for o in g.output}
    rename, keep = {}, []
    for n in g.node:
        if n.op_type == "Reshape":
            a, b = shapes.get(n.input[0]), shapes.get(n.output[0])
            if a is not None and a == b and None not in a and n.output[0] not in outputs:
                rename[n.output[0]] = rename.get(n.input[0], n.input[0])
                continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    rename_references(g, rename)
    return len(rename)
