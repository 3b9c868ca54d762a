"""Loop inlining for the batch-1 pass: prove that a Loop runs exactly once, then put its body in its place.

Owns the proof (``runs_exactly_once``, from the partial evaluation in batch1_known.py), the
inlining itself (``inline_loop``) and the renaming it needs (``taken_names``, ``rename_references``).
Must not touch anything but the Loop it inlines: dead nodes and folding are batch1_cleanup.py's.
"""

from __future__ import annotations

import numpy as np

from detzoo.onnxgraph import subgraphs, walk_graphs, walk_nodes
from detzoo.quantize.batch1_known import Known


def _body(loop):
    return next(a.g for a in loop.attribute if a.name == "body")


def body_size(loop) -> int:
    """Nodes in the Loop's body (its top level)."""
    return len(_body(loop).node)


def runs_exactly_once(loop, known: Known, shapes) -> tuple[bool, str]:
    """Prove the loop's trip count is one from constants and static dimensions."""
    from onnx import numpy_helper

    m_name, cond_name = loop.input[0], loop.input[1]
    body = _body(loop)
    if cond_name:
        start = known.full(cond_name)
        if start is None:
            return False, "its start condition depends on image content or an unknown dimension"
        if not bool(np.asarray(start).reshape(-1)[0]):
            return False, "its start condition is false (it never runs)"
    if m_name:
        m = known.full(m_name)
        if m is None:
            return False, "its maximum trip count is not a constant"
        if int(np.asarray(m).reshape(-1)[0]) < 1:
            return False, "its maximum trip count is below one"
        if int(np.asarray(m).reshape(-1)[0]) == 1:
            return True, "maximum trip count is 1"
    if not cond_name:
        return False, "it has no condition and a trip count other than one"
    inner = Known(shapes, outer=known)
    for init in body.initializer:
        inner.values[init.name] = numpy_helper.to_array(init)
    inner.values[body.input[0].name] = np.array(0, dtype=np.int64)
    inner.values[body.input[1].name] = np.array(True)
    for vi, init_name in zip(body.input[2:], loop.input[2:]):
        val = known.full(init_name) if init_name else None
        if val is not None:
            inner.values[vi.name] = val
    inner.run(body.node)
    after = inner.full(body.output[0].name)
    if after is None:
        return False, "its continue condition depends on image content or an unknown dimension"
    if bool(np.asarray(after).reshape(-1)[0]):
        return False, "its continue condition stays true after the first iteration"
    return True, "start condition true, continue condition false after one iteration (batch of one)"


def taken_names(graph) -> set[str]:
    """Every initializer, input and node output name of ``graph`` and its subgraphs."""
    taken = set()
    for g in walk_graphs(graph):
        taken.update(i.name for i in g.initializer)
        taken.update(i.name for i in g.input)
    for n in walk_nodes(graph):
        taken.update(n.output)
    return taken


def _unique(name: str, taken: set[str]) -> str:
    new, k = name, 1
    while new in taken:
        new, k = f"{name}__b1_{k}", k + 1
    taken.add(new)
    return new


def rename_references(g, mapping: dict[str, str]) -> None:
    """Rename references in ``g`` and in its nested subgraphs (outer-scope references)."""
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in mapping:
                n.input[i] = mapping[name]
        for sub in subgraphs(n):
            rename_references(sub, mapping)


def inline_loop(graph, loop, taken: set[str]) -> list:
    """Nodes that compute one iteration of ``loop`` and produce its outputs under their names."""
    from onnx import helper, numpy_helper

    body = _body(loop)
    tag = loop.name or "loop"
    mapping: dict[str, str] = {}
    new_nodes = []
    iter_name = _unique(f"{tag}/iteration0", taken)
    cond_name = _unique(f"{tag}/cond_true", taken)
    graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), iter_name))
    graph.initializer.append(numpy_helper.from_array(np.array(True), cond_name))
    mapping[body.input[0].name] = iter_name
    mapping[body.input[1].name] = cond_name
    for vi, init_name in zip(body.input[2:], loop.input[2:]):
        mapping[vi.name] = init_name
    for init in body.initializer:
        new = _unique(init.name, taken)
        mapping[init.name] = new
        copy = type(init)()
        copy.CopyFrom(init)
        copy.name = new
        graph.initializer.append(copy)
    for n in body.node:
        for o in n.output:
            if o:
                mapping[o] = _unique(o, taken)
    for n in body.node:
        c = type(n)()
        c.CopyFrom(n)
        c.input[:] = [mapping.get(i, i) for i in n.input]
        c.output[:] = [mapping.get(o, o) for o in n.output]
        for sub in subgraphs(c):  # a nested subgraph refers to the body's names from outer scope
            rename_references(sub, mapping)
        new_nodes.append(c)
    n_carried = len(loop.input) - 2
    body_out = [mapping.get(o.name, o.name) for o in body.output]
    for k, out in enumerate(loop.output):
        if not out:
            continue
        src = body_out[1 + k]
        if k < n_carried:
            new_nodes.append(helper.make_node("Identity", [src], [out], name=_unique(f"{tag}/final_{k}", taken)))
        else:
            axes = _unique(f"{tag}/stack_axes_{k}", taken)
            graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), axes))
            new_nodes.append(helper.make_node("Unsqueeze", [src, axes], [out], name=_unique(f"{tag}/stack_{k}", taken)))
    return new_nodes
