"""Canonical node order and names for ONNX models, so equal inputs give byte-identical files.

tf2onnx (and onnxruntime's quantization tools) iterate over sets of Python objects, so node order
and generated names (``Less__96`` vs ``Less_1__98``) change from run to run although the
computation is the same. Here every value gets a structural hash (op, attributes, hashes of its
inputs; initializers by content), nodes are topologically sorted with ties broken by that hash,
and generated names are reassigned in that order from their readable stem.

Owns: node order and generated names. Does not touch: the computation (same ops, attributes and
initializers), files.
"""

from __future__ import annotations

import hashlib
import re

import onnx

from detzoo.onnxgraph import attribute_graphs, reads, topological_order

_GENERATED = re.compile(r"(__\d+)+")
_COPY_PREFIX = re.compile(r"^(copy__\d+/)+")


def _h(*parts) -> str:
    m = hashlib.sha1()
    for p in parts:
        m.update(p if isinstance(p, bytes) else str(p).encode())
        m.update(b"\x1f")
    return m.hexdigest()


def _stem(name: str) -> str:
    return _GENERATED.sub("", _COPY_PREFIX.sub("", name)) or "t"


class _Namer:
    def __init__(self, reserved):
        self.used = set(reserved)

    def __call__(self, old: str) -> str:
        base = _stem(old)
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}__{k}"
        self.used.add(name)
        return name


def _type_key(t) -> bytes:
    """A type without its symbolic dimension names (tf2onnx numbers them with a global counter)."""
    anon = onnx.TypeProto()
    anon.CopyFrom(t)
    if anon.HasField("tensor_type"):
        for d in anon.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.dim_param = "?"
    return anon.SerializeToString(deterministic=True)


def _hash_graph(g, outer: dict, is_sub: bool = False) -> tuple[dict, list]:
    """Structural hash of every value of ``g`` (subgraphs included) and of each node, in order.

    Main-graph inputs are known by name; a subgraph's inputs are local, known by position."""
    h = dict(outer)
    for j, i in enumerate(g.input):
        h[i.name] = _h("input", j if is_sub else i.name, _type_key(i.type))
    for t in g.initializer:
        anon = onnx.TensorProto()
        anon.CopyFrom(t)
        anon.ClearField("name")
        h[t.name] = _h("init", anon.SerializeToString(deterministic=True))
    node_keys = []
    for n in g.node:
        attr_keys = []
        for a in sorted(n.attribute, key=lambda a: a.name):
            subs = attribute_graphs(a)
            if subs:
                inner_keys = []
                for sub in subs:
                    inner, _ = _hash_graph(sub, h, is_sub=True)
                    inner_keys.append(_h(*(inner[o.name] for o in sub.output)))
                attr_keys.append(_h(a.name, *inner_keys))
            else:
                attr_keys.append(_h(a.SerializeToString(deterministic=True)))
        key = _h(n.domain, n.op_type, *attr_keys, *(h.get(x, _h("free", x)) if x else "" for x in n.input))
        node_keys.append(key)
        for k, o in enumerate(n.output):
            if o:
                h[o] = _h(key, k)
    return h, node_keys


def _rename_inputs(g, alias: dict) -> None:
    for n in g.node:
        n.input[:] = [alias.get(x, x) for x in n.input]
        for a in n.attribute:
            for sub in attribute_graphs(a):
                _rename_inputs(sub, alias)


def _merge_duplicates(g, node_keys: list) -> list:
    """Drop nodes that repeat an earlier node's computation exactly (same key).

    Left in place, identical twins would be told apart only by their arbitrary original order,
    which decides which consumer reads which twin."""
    outputs = {v.name for v in g.output}
    seen, alias, drop = {}, {}, set()
    for i, n in enumerate(g.node):
        if (any(attribute_graphs(a) for a in n.attribute) or n.op_type.startswith(("Random", "Multinomial", "Bernoulli"))
                or any(o in outputs for o in n.output)):
            continue
        j = seen.setdefault(node_keys[i], i)
        if j != i:
            alias.update((o, k) for o, k in zip(n.output, g.node[j].output) if o)
            drop.add(i)
    if not drop:
        return node_keys
    _rename_inputs(g, alias)
    kept = [(n, k) for i, (n, k) in enumerate(zip(list(g.node), node_keys)) if i not in drop]
    nodes = [onnx.NodeProto() for _ in kept]
    for dst, (src, _) in zip(nodes, kept):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(nodes)
    return [k for _, k in kept]


def _base(old: str, op_type: str) -> str:
    """Top-level scope of the old name plus the op type.

    Deeper scopes are not stable: when tf2onnx merges identical nodes, which one's name survives
    changes from run to run (BoxPredictor_5/ClassPredictor_depthwise/Reshape one time,
    BoxPredictor_5/BoxEncodingPredictor_depthwise/Reshape the next)."""
    stem = _stem(old)
    scope = stem.partition("/")[0] if "/" in stem else ""
    return f"{scope}/{op_type}" if scope else op_type


def _canon_graph(g, outer_hash: dict, namer: _Namer, rename: dict, owner: str | None) -> None:
    """Sort and rename ``g``; ``owner`` is the node whose attribute holds it (None: main graph)."""
    h, node_keys = _hash_graph(g, outer_hash, is_sub=owner is not None)
    node_keys = _merge_duplicates(g, node_keys)
    order = topological_order(g, node_keys)
    nodes = [g.node[i] for i in order]
    keys = [node_keys[i] for i in order]
    local = dict(rename)
    if owner is not None:  # subgraph inputs and outputs are local names: name them by position
        for j, v in enumerate(g.input):
            local[v.name] = namer(f"{owner}/in{j}")
        for j, v in enumerate(g.output):
            if v.name not in local:
                local[v.name] = namer(f"{owner}/out{j}")
    # Identical computations (same key) are interchangeable: give them their bases in sorted order.
    groups: dict[str, list] = {}
    for n, k in zip(nodes, keys):
        groups.setdefault(k, []).append(_base(n.name or n.op_type, n.op_type))
    for names in groups.values():
        names.sort(reverse=True)
    new_names = [namer(groups[k].pop()) for k in keys]
    for n, name in zip(nodes, new_names):
        for k, o in enumerate(n.output):
            if o and o not in local and not (owner is None and o in {v.name for v in g.output}):
                local[o] = namer(f"{name}:{k}")
    consumers = {}
    for n, name in zip(nodes, new_names):
        for j, x in enumerate(reads(n)):
            consumers.setdefault(x, f"{name}/in{j}" if j < len(n.input) else f"{name}/captured")
    out_names = {v.name for v in g.output}
    used = [t for t in g.initializer if t.name in consumers or t.name in out_names]
    if len(used) != len(g.initializer):  # orphaned by merged duplicates
        kept = [onnx.TensorProto() for _ in used]
        for dst, src in zip(kept, used):
            dst.CopyFrom(src)
        del g.initializer[:]
        g.initializer.extend(kept)
    for t in sorted(g.initializer, key=lambda t: (consumers.get(t.name, "~"), h[t.name])):
        local[t.name] = namer(consumers.get(t.name, "const"))
    for n, name in zip(nodes, new_names):
        n.name = name
        for f in ("domain", "doc_string"):  # an explicitly empty field serializes differently from an unset one
            if not getattr(n, f):
                n.ClearField(f)
        for a in n.attribute:
            for sub in attribute_graphs(a):
                sub.name = f"{name}/{a.name}"
                sub.doc_string = ""  # tf2onnx writes per-run text here
                _canon_graph(sub, h, namer, local, owner=name)
        n.input[:] = [local.get(x, x) for x in n.input]
        n.output[:] = [local.get(x, x) for x in n.output]
    for t in g.initializer:
        t.name = local.get(t.name, t.name)
    inits = sorted(g.initializer, key=lambda t: t.name)
    del g.initializer[:]
    g.initializer.extend(inits)
    ordered = [onnx.NodeProto() for _ in nodes]
    for dst, src in zip(ordered, nodes):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(ordered)
    for seq in (g.input, g.output, g.value_info):
        for v in seq:
            v.name = local.get(v.name, v.name)
    vis = sorted(g.value_info, key=lambda v: v.name)
    del g.value_info[:]
    g.value_info.extend(vis)


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder and rename ``model`` in place into its canonical form; returns it."""
    g = model.graph
    reserved = {i.name for i in g.input} | {o.name for o in g.output}
    _canon_graph(g, {}, _Namer(reserved), {}, owner=None)
    _rename_dim_params(g, {})
    return model


def _rename_dim_params(g, names: dict) -> None:
    """Number symbolic dimensions in the canonical order of first appearance."""
    for seq in (g.input, g.output, g.value_info):
        for v in seq:
            if v.type.HasField("tensor_type"):
                for d in v.type.tensor_type.shape.dim:
                    if d.HasField("dim_param"):
                        d.dim_param = names.setdefault(d.dim_param, f"unk__{len(names)}")
    for n in g.node:
        for a in n.attribute:
            for sub in attribute_graphs(a):
                _rename_dim_params(sub, names)
