"""ONNX graph plumbing every pass shares: subgraphs, walks, producers and consumers.

Converted detectors keep their network inside Loop bodies (the contract's batch Loop, the OD
API's map_fn), so a pass that looks only at ``model.graph.node`` sees a Loop and nothing else.
Owns reading a graph's structure (``topological_order`` computes an order, it applies none); it changes nothing (passes that rewrite graphs stay with their
stage: batch1.py, fp16.py, int8.py, contract.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

GRAPH = onnx.AttributeProto.GRAPH
GRAPHS = onnx.AttributeProto.GRAPHS


def attribute_graphs(a) -> list:
    """The graphs one attribute holds (none for a plain attribute)."""
    return [a.g] if a.type == GRAPH else list(a.graphs) if a.type == GRAPHS else []


def subgraphs(node) -> list:
    """The graphs a node holds (a Loop's body, an If's branches, a Scan's body)."""
    return [g for a in node.attribute for g in attribute_graphs(a)]


def has_subgraphs(graph) -> bool:
    return any(subgraphs(n) for n in graph.node)


def walk_graphs(graph) -> Iterator:
    """``graph`` and every graph nested in it, depth first."""
    yield graph
    for n in graph.node:
        for sub in subgraphs(n):
            yield from walk_graphs(sub)


def walk_nodes(graph) -> Iterator:
    """Every node of ``graph`` and of its subgraphs, depth first (a node before its bodies)."""
    for n in graph.node:
        yield n
        for sub in subgraphs(n):
            yield from walk_nodes(sub)


def producers(graph) -> dict:
    """Value name -> the node of ``graph`` (not of its subgraphs) that makes it."""
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph) -> dict:
    """Value name -> the nodes of ``graph`` (not of its subgraphs) that read it, in node order."""
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def initializers(graph) -> dict:
    return {i.name: i for i in graph.initializer}


def reads(node) -> list:
    """The names ``node`` reads: its inputs, then what its subgraphs read (outer-scope values among them)."""
    names = list(node.input)
    for sub in subgraphs(node):
        for n in sub.node:
            names += reads(n)
    return names


def topological_order(graph, keys=None) -> list[int]:
    """Indices of ``graph.node`` in an order where every node comes after the producers of what it
    reads, a subgraph's outer-scope reads included (onnx's checker requires it; onnxruntime's saved
    optimized models do not always keep it). Ties go to the smaller key (default: the current
    index, so a sorted graph keeps its order). A cycle, which no valid model has, returns the
    current order."""
    import heapq

    keys = list(range(len(graph.node))) if keys is None else keys
    made = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = [set() for _ in graph.node]
    users = [[] for _ in graph.node]
    for i, n in enumerate(graph.node):
        for x in reads(n):
            j = made.get(x)
            if j is not None and j != i and j not in deps[i]:
                deps[i].add(j)
                users[j].append(i)
    indeg = [len(d) for d in deps]
    heap = [(keys[i], i) for i in range(len(graph.node)) if indeg[i] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, i = heapq.heappop(heap)
        order.append(i)
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(heap, (keys[u], u))
    return order if len(order) == len(graph.node) else list(range(len(graph.node)))
