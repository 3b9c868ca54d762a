"""ONNX graph plumbing every pass shares: subgraphs, walks, producers and consumers.

Converted detectors keep their network inside Loop bodies (the contract's batch Loop, the OD
API's map_fn), so a pass that looks only at ``model.graph.node`` sees a Loop and nothing else.
Owns reading a graph's structure; it changes nothing (passes that rewrite graphs stay with their
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
