"""``detzoo convert``: a TF detection model to an fp32 ONNX artifact that keeps the zoo contract.

Owns: the convert stage: tf2onnx, the contract wrapper applied, canonical order, fixed-size
variants, the parity check run, and the entry (artifacts + manifest) committed. Does not touch:
quantized variants' making (detzoo.quantize), accuracy (detzoo.verify).
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from detzoo.errors import CheckFailed, DetzooError, InternalError, first_line
from detzoo.fsutil import remove_stale_temporaries, sha256_file, staging
from detzoo.images import demo_dir
from detzoo.manifest import MANIFEST, Manifest, Variant
from detzoo.contract import fixed_size_io, fixed_size_name
from detzoo.onnxcanon import canonicalize
from detzoo.runners import OrtRunner, source_runner
from detzoo.options import ALLOW_UNSAFE_OPS, CHECK, CHECK_LIMIT, FORCE, OPSET, THREADS, check
from detzoo.source import OUTPUT_ROLES, IOSpec, ModelFormat, ModelSource, open_source
from detzoo.convert.iodetect import detect_io
from detzoo.convert.loading import load_model_graph
from detzoo.convert.parity import ParityReport, ParityTolerance, check_parity, noise_runners


@dataclass
class ConvertConfig:
    source: Path
    out: Path
    opset: int = OPSET.default
    input_name: str | None = None
    output_names: list | None = None
    name: str | None = None
    force: bool = FORCE.default
    check: bool = CHECK.default
    check_images: Path | None = None
    check_limit: int | None = CHECK_LIMIT.default
    threads: int = THREADS.default
    tolerance: ParityTolerance = field(default_factory=ParityTolerance)
    allow_unsafe_ops: bool = ALLOW_UNSAFE_OPS.default
    label_map: dict | None = None
    keep_source_io: bool = False          # keep the source's IO instead of the zoo contract
    artifact_input: str | None = None     # --input-name: the artifact's input name
    input_sizes: list = field(default_factory=list)  # --input-size: fixed-size variants, [(h, w)]

    def __post_init__(self):
        from detzoo.contract import parse_size

        self.source, self.out = Path(self.source), Path(self.out)
        self.input_sizes = list(dict.fromkeys(parse_size(s) if isinstance(s, str) else tuple(s)
                                              for s in self.input_sizes or ()))
        for h, w in self.input_sizes:
            if not (0 < h <= 8192 and 0 < w <= 8192):
                raise DetzooError(f"--input-size takes sizes between 1 and 8192 pixels, got {h}x{w}")
        if self.artifact_input is not None and (not self.artifact_input.strip() or self.keep_source_io):
            raise DetzooError(f"--input-name takes a non-empty name and excludes --keep-source-io, "
                              f"got {self.artifact_input!r}")
        check(self, OPSET, THREADS, CHECK_LIMIT)
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise DetzooError(f"--name must be a plain file-name stem, got {self.name!r}")


@dataclass
class ConvertResult:
    manifest: Manifest
    artifact: Path
    parity: ParityReport | None
    seconds: float
    parities: dict = field(default_factory=dict)  # every variant's parity, fixed-size ones too
    variant: str = "fp32"  # the converted variant: int8 for an integer TFLite source


def default_name(src: ModelSource) -> str:
    origin = src.origin
    if origin.is_file() and origin.name.endswith((".tar.gz", ".tgz", ".tar")):
        return origin.name.split(".tar")[0].removesuffix(".tgz")
    if src.format == ModelFormat.FROZEN_GRAPH:
        return src.path.parent.name or "model"
    if src.format == ModelFormat.SAVED_MODEL:
        return (src.path.parent.name if src.path.name == "saved_model" else src.path.name) or "model"
    return src.path.stem


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DetzooError(f"--out {out} exists and is not a folder")
    if out.is_dir() and not force:
        existing = sorted(p.name for p in out.iterdir() if p.name == MANIFEST or p.suffix == ".onnx")
        if existing:
            raise DetzooError(f"{out} already holds artifacts ({', '.join(existing[:4])}); pass --force to replace them")


def _quiet_tf2onnx():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)


def valid_unit_pools(model):
    """Pools of kernel 1 with SAME padding (slim resnet_v1's shortcut subsampling, in TF1 Faster
    R-CNN ResNets) get VALID padding instead: the same output, since a 1x1 window never reaches
    padding, but onnxruntime below optimization level all computes a negative pad for SAME_UPPER
    with stride 2 on even sizes and refuses to run the model. Returns how many were changed."""
    from detzoo.onnxgraph import walk_nodes

    changed = 0
    for node in walk_nodes(model.graph):
        if node.op_type not in ("MaxPool", "AveragePool"):
            continue
        attrs = {a.name: a for a in node.attribute}
        pad = attrs.get("auto_pad")
        if pad is not None and pad.s in (b"SAME_UPPER", b"SAME_LOWER") and "kernel_shape" in attrs \
                and all(k == 1 for k in attrs["kernel_shape"].ints):
            pad.s = b"VALID"
            changed += 1
    return changed


def run_tf2onnx(src: ModelSource, io: IOSpec, opset: int):
    """Convert with tf2onnx; returns the ONNX ModelProto with outputs as tf2onnx names them."""
    _quiet_tf2onnx()
    import tf2onnx
    from tf2onnx import tf_loader, utils

    # tf2onnx numbers generated names with a process-wide counter, and some of its passes iterate
    # over sets of those names: a second conversion in the same process started from a higher count
    # and could come out different. Every conversion starts where a fresh process does.
    utils.INTERNAL_NAME = 1
    buf = _io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            if src.format == ModelFormat.FROZEN_GRAPH:
                from detzoo.source import load_graph_def

                model, _ = tf2onnx.convert.from_graph_def(load_graph_def(src.path), name=src.path.stem,
                                                          input_names=[io.input.name],
                                                          output_names=io.output_names, opset=opset)
            elif src.format == ModelFormat.SAVED_MODEL:
                gd, inputs, outputs, tables, renames = tf_loader.from_saved_model(
                    str(src.path), None, None, "serve", ["serving_default"], None, False,
                    return_initialized_tables=True, return_tensors_to_rename=True)
                model, _ = tf2onnx.convert._convert_common(
                    gd, name=src.path.name, continue_on_error=True, opset=opset, input_names=inputs,
                    output_names=outputs, tensors_to_rename=renames, initialized_tables=tables)
            else:
                from onnx import helper

                from detzoo.convert import tflite_postprocess

                # TFLite_Detection_PostProcess: tf2onnx approximates it; it becomes a placeholder
                # here and is expanded below into the kernel's exact algorithm.
                model, _ = tf2onnx.convert.from_tflite(
                    str(src.path), opset=opset, custom_op_handlers=tflite_postprocess.tf2onnx_handlers(),
                    extra_opset=[helper.make_opsetid(tflite_postprocess.DOMAIN, 1)])
                model = tflite_postprocess.expand(model)
    except DetzooError:
        raise
    except Exception as e:  # tf2onnx raises bare exceptions of many kinds; the model passed every check
        raise InternalError(f"tf2onnx could not convert {src.path.name}: {type(e).__name__}: {first_line(e)}") from e
    return model


def artifact_output_names(src: ModelSource, io: IOSpec) -> list[str]:
    """Frozen graphs keep their tensor names (``num_detections:0``); others get the role names."""
    if src.format == ModelFormat.FROZEN_GRAPH:
        return io.output_names
    return list(OUTPUT_ROLES)


def enforce_contract(model, src: ModelSource, io: IOSpec):
    """Outputs in the zoo's order with the contract's names; the input keeps the source's name."""
    import onnx
    from onnx import helper

    graph = model.graph
    produced = {o.name: o for o in graph.output}
    # tf2onnx names SavedModel outputs by signature key and TFLite outputs by tensor name.
    candidates = {r: [io.outputs[r], io.outputs[r] + ":0", r] for r in OUTPUT_ROLES}
    wanted = artifact_output_names(src, io)
    new_outputs = []
    for role, new_name in zip(OUTPUT_ROLES, wanted):
        old = next((c for c in candidates[role] if c in produced), None)
        if old is None:
            raise DetzooError(f"converted model lacks output {io.outputs[role]!r}; it has {sorted(produced)}")
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(produced[old])
        if old != new_name:
            graph.node.append(helper.make_node("Identity", [old], [new_name], name=f"detzoo_contract_{role}"))
            vi.name = new_name
        new_outputs.append(vi)
    del graph.output[:]
    graph.output.extend(new_outputs)
    if len(graph.input) != 1:
        raise DetzooError(f"converted model has {len(graph.input)} inputs; expected one image input")
    onnx.checker.check_model(model)
    return model


def apply_contract(model, src: ModelSource, io: IOSpec, cfg: ConvertConfig):
    """(model, artifact IO): the converted model in the zoo contract, unless --keep-source-io."""
    from detzoo.contract import contract_io, keeps_contract, rename_io, wrap

    names = artifact_output_names(src, io)
    if cfg.keep_source_io:
        return model, io
    art = contract_io(io, names, cfg.artifact_input)
    if keeps_contract(io):
        art.input.shape = list(io.input.shape)
        return rename_io(model, art.input.name, names), art
    is_float = io.input.dtype.startswith("float")
    wrapped = wrap(model, input_name=art.input.name, output_names=names,
                   resize=tuple(io.resize) if io.resize else None,
                   scale=io.scale if is_float else None, offset=io.offset if is_float else 0.0,
                   round_to_uint8=not is_float, class_offset=io.class_offset, resize_with=io.resize_with)
    return wrapped, art


def _clean_replaced(out: Path, old: Manifest | None, keep: set[str]) -> None:
    """After --force: remove files the previous manifest listed that the new one does not."""
    if old is None:
        return
    for v in old.variants.values():
        if v.file not in keep:
            (out / v.file).unlink(missing_ok=True)
    for report in ("report.json", "REPORT.md", "report.html", "README.md", "pr_arrays.npz"):
        (out / report).unlink(missing_ok=True)


def convert(cfg: ConvertConfig) -> ConvertResult:
    import onnx

    t0 = time.perf_counter()
    with open_source(cfg.source) as src:
        _refuse_existing(cfg.out, cfg.force)
        old = None
        if cfg.force and (cfg.out / MANIFEST).is_file():
            with contextlib.suppress(DetzooError):
                old = Manifest.load(cfg.out)
        graph = load_model_graph(src, cfg.allow_unsafe_ops)
        io = detect_io(src, cfg.input_name, cfg.output_names, graph=graph)
        if cfg.label_map:
            io.label_map = {int(k): str(v) for k, v in cfg.label_map.items()}
        steps, source_precision = None, "fp32"
        if src.format == ModelFormat.TFLITE:
            from detzoo.convert.tflite_postprocess import output_steps
            from detzoo.source import tflite_precision

            steps = output_steps(src.path.read_bytes())  # None for a float model
            source_precision = tflite_precision(graph)
        # An integer source converts to the int8 variant (quantize does not quantize it again); a
        # float16 TFLite dequantizes its weights at load and computes in float32, as its ONNX does.
        base = "int8" if source_precision == "int8" else "fp32"
        del graph
        name = cfg.name or default_name(src)
        if cfg.input_sizes and cfg.keep_source_io and io.resize:
            bad = [f"{h}x{w}" for h, w in cfg.input_sizes if [h, w] != list(io.resize)]
            if bad:
                raise DetzooError(f"--input-size {bad[0]}: with --keep-source-io the model takes only "
                                  f"{io.resize[0]}x{io.resize[1]} (drop --keep-source-io to resize inside the graph)")
        model = run_tf2onnx(src, io, cfg.opset)
        valid_unit_pools(model)
        from detzoo.convert.exact_resize import exact_tf_resize

        exact_tf_resize(model)  # TF's ResizeBilinear rounding, bit for bit (TFLite's kernel shares it)
        uint8 = None
        if src.format == ModelFormat.TFLITE:
            from detzoo.convert.integer import to_uint8_domain

            model, uint8 = to_uint8_domain(model)  # integer sources: TFLite's integer arithmetic
        model, art_io = apply_contract(enforce_contract(model, src, io), src, io, cfg)
        model = canonicalize(model)
        cfg.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(cfg.out)
        artifact = cfg.out / f"{name}.{base}.onnx"
        variants, staged, parities = {}, {}, {}
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(staging(cfg.out, ".onnx"))
            onnx.save(model, tmp)
            conversion_seconds = time.perf_counter() - t0
            settings = {"opset": cfg.opset, "input": cfg.input_name, "output": cfg.output_names,
                        "onnx_input": model.graph.input[0].name,
                        "onnx_outputs": [o.name for o in model.graph.output],
                        "contract": not cfg.keep_source_io,
                        "conversion_seconds": round(conversion_seconds, 3),
                        "allow_unsafe_ops": cfg.allow_unsafe_ops, "source_precision": source_precision}
            if steps is not None:
                settings["source_output_steps"] = steps.to_json()
            if uint8 is not None and uint8.tensors:
                settings["integer"] = uint8.to_json()
            variants[base] = Variant(name=base, file=artifact.name, precision=base, sha256=sha256_file(tmp),
                                       size=tmp.stat().st_size, opset=cfg.opset, settings=settings)
            staged[artifact.name] = tmp
            ios = {base: art_io}
            for h, w in cfg.input_sizes:
                from detzoo.contract import fix_input_size

                vname = fixed_size_name(base, h, w)
                vtmp = stack.enter_context(staging(cfg.out, ".onnx"))
                onnx.save(fix_input_size(model, h, w), vtmp)
                ios[vname] = fixed_size_io(art_io, h, w)
                variants[vname] = Variant(name=vname, file=f"{name}.{vname}.onnx", precision=base,
                                          sha256=sha256_file(vtmp), size=vtmp.stat().st_size, opset=cfg.opset,
                                          parent=base, io=ios[vname].to_dict(),
                                          settings={**settings, "input_size": [h, w]})
                staged[variants[vname].file] = vtmp
            if cfg.check:
                images = cfg.check_images or demo_dir("eval")
                tolerance = cfg.tolerance.for_source(steps)
                with source_runner(src.format, src.path, io, cfg.threads,
                                   allow_unsafe_ops=cfg.allow_unsafe_ops) as s_run:
                    for vname, v in variants.items():
                        with contextlib.ExitStack() as runners:
                            o_run = runners.enter_context(OrtRunner(staged[v.file], ios[vname], cfg.threads,
                                                                    allow_unsafe_ops=cfg.allow_unsafe_ops))
                            noise = (runners.enter_context(noise_runners(staged[v.file], ios[vname], cfg.threads,
                                                                         cfg.allow_unsafe_ops))
                                     if tolerance.wants_noise else None)
                            feed = tuple(ios[vname].resize) if vname != base else None
                            parities[vname] = check_parity(s_run, o_run, images, tolerance, cfg.check_limit,
                                                           feed=feed, noise=noise)
                        v.checks["parity"] = {**parities[vname].to_json(), "images_dir": str(images),
                                              "fed": (f"{feed[0]}x{feed[1]} (OpenCV bilinear) to both"
                                                      if feed else "each model as it expects")}
            manifest = Manifest(name=name, source=src.describe(), io=art_io, variants=variants,
                                source_io=None if art_io is io else io)
            manifest.save(cfg.out, staged)  # artifacts and manifest in one commit
        _clean_replaced(cfg.out, old, keep={v.file for v in variants.values()})
    parity = parities.get(base)
    result = ConvertResult(manifest, artifact, parity, time.perf_counter() - t0, parities, base)
    for vname, p in parities.items():
        if not p.passed:
            raise CheckFailed(f"{variants[vname].file} does not match its source: {p.summary()}")
    return result
