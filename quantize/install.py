"""Installing the built variants: their file names, the any-batch Loop put back, fixed-size copies, and
files and manifest saved as one journaled commit.

Every artifact is staged in the entry's folder, then put in place with the manifest, last, so files
and recorded sha256s never disagree, even after a kill. Owns the variants' file names
(``variant_files``, ``refuse_existing``), ``sort_nodes``, ``with_any_batch`` and ``install``. Must not
touch what a built graph computes: it only orders its nodes, wraps it in the contract's batch Loop or
fixes its input size, and checks.py's batch check proves the Loop changed nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from detzoo.contract import fix_input_size, fixed_size_io, fixed_size_name
from detzoo.errors import DetzooError
from detzoo.fsutil import sha256_file, staging
from detzoo.manifest import Manifest, Variant
from detzoo.quantize.checks import batch_check


def variant_files(m: Manifest, fp32_batch1: bool, fp16: bool, int8: bool) -> dict[str, str]:
    """Variant name -> its file name in the entry, for the variants asked for."""
    wanted = [v for v, on in (("fp32_batch1", fp32_batch1), ("fp16", fp16), ("int8", int8)) if on]
    return {v: f"{m.name}.{v.replace('_', '-')}.onnx" for v in wanted}


def refuse_existing(folder: Path, m: Manifest, files: dict[str, str], force: bool) -> None:
    if force:
        return
    present = [f for v, f in files.items() if v in m.variants or (folder / f).exists()]
    if present:
        raise DetzooError(f"{folder} already holds {', '.join(present)}; pass --force to replace "
                          f"{'it' if len(present) == 1 else 'them'}")


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def with_any_batch(model, first_outside: bool = False):
    """The batch-1 model inside the contract's Loop over the batch (no preprocessing: it is already inside).

    fp16 runs its first image at the top level: inside a Loop body onnxruntime casts fp16 weights
    on every call, which made fp16 much slower at batch 1 (BENCHMARKS.md, "Figures moved from
    quantize docstrings", and the contract section); int8 keeps every image in the body, whose own
    weights onnxruntime fuses into QLinearConv."""
    from detzoo.contract import wrap

    return wrap(model, input_name=model.graph.input[0].name, output_names=[o.name for o in model.graph.output],
                first_outside=first_outside)


def install(folder: Path, m: Manifest, built: dict, files: dict[str, str], *, any_batch: bool,
            batch_images: list, allow_unsafe_ops: bool = False) -> None:
    """Stage every built variant (``built``: name -> (path, settings, checks)) in ``folder``, with its
    any-batch Loop when the fp32 artifact takes any batch (checked on ``batch_images``) and a copy for
    each fixed-size fp32 variant, then save ``m`` with them as one commit."""
    import onnx

    staged = {}
    with contextlib.ExitStack() as stack:
        for name, (path, settings, checks) in built.items():
            tmp = staged[files[name]] = stack.enter_context(staging(folder, ".onnx"))
            art = onnx.load(str(path))
            sort_nodes(art.graph)
            if any_batch and name != "fp32_batch1":  # the batch-1 build gets any batch back: a Loop over the images
                art = with_any_batch(art, first_outside=name == "fp16")
                checks = {**checks, "batch": batch_check(path, art, m.io, batch_images, allow_unsafe_ops)}
            onnx.save(art, str(tmp))
            m.variants[name] = Variant(name=name, file=files[name], precision=name.split("_")[0],
                                       sha256=sha256_file(tmp), size=tmp.stat().st_size, opset=_opset(art),
                                       parent="fp32", checks=checks,
                                       settings={**settings, "batch": "any" if any_batch and name != "fp32_batch1"
                                                 else 1})
            if name == "fp32_batch1":  # the opt-in variant that is what its name says: batch 1
                io1 = m.io.to_dict()
                io1["input"] = {**io1["input"], "shape": [1, *io1["input"]["shape"][1:]]}
                m.variants[name].io = io1
                continue
            for fixed in [v for v in list(m.variants.values()) if v.name.startswith("fp32-")
                          and (v.settings or {}).get("input_size")]:
                h, w = fixed.settings["input_size"]
                vname = fixed_size_name(name, h, w)
                vfile = f"{m.name}.{vname}.onnx"
                vtmp = staged[vfile] = stack.enter_context(staging(folder, ".onnx"))
                onnx.save(fix_input_size(art, h, w), str(vtmp))
                m.variants[vname] = Variant(name=vname, file=vfile, precision=name.split("_")[0],
                                            sha256=sha256_file(vtmp), size=vtmp.stat().st_size, opset=_opset(art),
                                            parent=name, io=fixed_size_io(m.io, h, w).to_dict(),
                                            settings={"input_size": [h, w], "from": files[name],
                                                      "batch": "any" if any_batch else 1})
        m.save(folder, staged)


def sort_nodes(graph) -> int:
    """Put ``graph``'s nodes (and its subgraphs') in topological order, outer-scope reads included;
    returns how many graphs changed. onnxruntime's optimized model can place a node after a Loop
    whose body reads its output (seen on the default SSDLite once its resizes compute TF's
    formula), and so can its quantizer's: onnxruntime runs them, onnx's checker, and so the
    contract's batch Loop, refuse them."""
    from detzoo.onnxgraph import subgraphs, topological_order

    changed = 0
    for n in graph.node:
        for sub in subgraphs(n):
            changed += sort_nodes(sub)
    order = topological_order(graph)
    if order != list(range(len(graph.node))):
        nodes = [graph.node[i] for i in order]
        del graph.node[:]
        graph.node.extend(nodes)
        changed += 1
    return changed
