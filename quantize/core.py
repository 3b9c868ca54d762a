"""``detzoo quantize``: fp16 and int8 variants of a folder's fp32 artifact, recorded in its manifest.

Both variants start from the same *prepared* model: the fp32 artifact with its batch fixed to one
and its map_fn Loops inlined (batch1.py), then onnxruntime's basic optimizations through
``quant_pre_process`` (constant folding, BatchNormalization folded into Conv). The precision plan
(plan.py) then says which nodes change precision. All heavy work happens in a temporary folder;
only at the end are the artifacts renamed into place and the manifest saved, last, so a killed run
leaves the previous artifacts and manifest as they were.
"""

from __future__ import annotations

import contextlib
import io as _io
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from detzoo.errors import CheckFailed, DetzooError
from detzoo.fsutil import remove_stale_temporaries, sha256_file, staging
from detzoo.images import decode_image, demo_dir
from detzoo.runners import preprocess
from detzoo.cpu import speed_line
from detzoo.manifest import Manifest, Variant, machine_info
from detzoo.contract import batch_of_one, fix_input_size, fixed_size_io, fixed_size_name
from detzoo.quantize.batch1 import Batch1Report, specialize_batch1
from detzoo.quantize.calibration import CalibMethod, calibrate, check_feedable, pick_calibration_images
from detzoo.quantize.fidelity import FidelityProbe, check_image_paths
from detzoo.quantize.plan import INT8_OPS, PrecisionPlan, ensure_node_names, make_plan

DEFAULT_CALIB_LIMIT = 256  # without --calib-count: the folder's first 256 usable images
RANK_IMAGES = 4            # calibration images the sensitivity ranking runs on
# The search aims at this share of --max-drop on the check images, so that the budget still holds on
# the evaluation images, which differ (BENCHMARKS.md: the check-to-evaluation gap measured).
SEARCH_TARGET = 0.5


@dataclass
class QuantizeConfig:
    folder: Path
    fp16: bool = True
    int8: bool = True
    calib_images: Path | None = None      # default: the demo calibration frames
    calib_count: int | None = None        # default: all usable images, at most DEFAULT_CALIB_LIMIT
    calib_method: CalibMethod = CalibMethod.MINMAX
    per_channel: bool = True
    int8_target: str = "portable"         # portable: exact on every CPU; vnni: full 8-bit weights
    reduce_range: bool | None = None      # True: 7-bit weights everywhere; None: the target's choice
    bias_correction: bool = True
    adaround: bool = False
    cle: bool = False                     # cross-layer equalization before calibration (BENCHMARKS.md: it
                                          # loses fidelity with per-channel weights; kept for ablation)
    max_drop: float | None = None         # AP points the int8 variant may lose on the check images
    check_images: Path | None = None      # default: the demo evaluation frames
    check_limit: int | None = None
    force: bool = False
    threads: int = 1
    fp32_batch1: bool = False             # also install the prepared fp32 model (batch 1, Loops inlined)
    allow_unsafe_ops: bool = False        # quantize an fp32 artifact with custom-domain ops (recorded)
    feed_size: tuple | None = None        # calibrate and check on images fed as verify --feed-size feeds them

    def __post_init__(self):
        self.folder = Path(self.folder)
        if self.feed_size is not None:
            from detzoo.contract import parse_size

            self.feed_size = (parse_size(self.feed_size, "--feed-size") if isinstance(self.feed_size, str)
                              else tuple(int(x) for x in self.feed_size))
        if not (self.fp16 or self.int8 or self.fp32_batch1):
            raise DetzooError("nothing to do: both --no-fp16 and --no-int8 given; expected at least one variant")
        try:
            self.calib_method = CalibMethod(self.calib_method)
        except ValueError:
            raise DetzooError(f"--calib-method must be one of {[m.value for m in CalibMethod]}, "
                              f"got {self.calib_method!r}") from None
        if self.calib_count is not None and self.calib_count < 1:
            raise DetzooError(f"--calib-count must be >= 1, got {self.calib_count}")
        if self.max_drop is not None and not 0 <= self.max_drop <= 100:
            raise DetzooError(f"--max-drop must be between 0 and 100 AP points, got {self.max_drop}")
        if self.max_drop is not None and not self.int8:
            raise DetzooError("--max-drop applies to the int8 variant, but --no-int8 was given")
        if self.check_limit is not None and self.check_limit < 1:
            raise DetzooError(f"--check-limit must be >= 1, got {self.check_limit}")
        if self.threads < 1:
            raise DetzooError(f"--threads must be >= 1, got {self.threads}")
        self.int8_settings()  # contradictions (--reduce-range against the target) are bad input

    def int8_settings(self):
        from detzoo.quantize.int8 import Int8Settings

        return Int8Settings(calib_method=self.calib_method, per_channel=self.per_channel, target=self.int8_target,
                            reduce_range=self.reduce_range, bias_correction=self.bias_correction,
                            adaround=self.adaround)


@dataclass
class QuantizeResult:
    manifest: Manifest
    artifacts: dict                     # variant name -> Path
    fidelity: dict                      # variant name -> Fidelity.to_json()
    plan: PrecisionPlan
    batch1: Batch1Report
    search: dict | None = None
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    def int8_lines(self) -> list[str]:
        """What the int8 artifact guarantees and how fast it ran here, one plain line each."""
        v = self.manifest.variants.get("int8")
        if v is None or "int8" not in self.artifacts:
            return []
        s = v.settings
        port, speed = s.get("portability", {}), s.get("speed_probe")
        lines = [f"int8: saturation-safe on every CPU (largest u8 x s8 weight pair {port.get('largest_pair_sum')} "
                 f"<= {port.get('bound')})" if port.get("saturation_safe") else
                 f"int8: NOT saturation-safe: {port.get('unsafe_count')} layer(s) need VNNI or ARM to be exact"]
        if speed:
            lines.append(speed_line(speed))
        return lines


SPEED_RUNS = 15


def speed_probe(fp32: Path, int8: Path, io, image_path: Path, threads: int, allow_unsafe_ops: bool = False) -> dict:
    """A short interleaved p50 of fp32 and int8 on one image: enough to tell whether int8 pays off here."""
    import statistics

    from detzoo.cpu import cpu_class
    from detzoo.runners import OrtRunner

    batch = preprocess(decode_image(image_path), io)
    with OrtRunner(fp32, io, threads, allow_unsafe_ops=allow_unsafe_ops) as a, \
            OrtRunner(int8, io, threads, allow_unsafe_ops=allow_unsafe_ops) as b:
        for r in (a, b, a, b):
            r.infer(batch)
        ta, tb = [], []
        for _ in range(SPEED_RUNS):
            a.infer(batch)
            ta.append(a.last_inference_time)
            b.infer(batch)
            tb.append(b.last_inference_time)
    fa, fb = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
    return {"cpu_class": cpu_class(), "threads": threads, "runs": SPEED_RUNS, "fp32_ms": round(fa, 2),
            "int8_ms": round(fb, 2), "ratio": round(fb / fa, 3)}


def prepare(fp32: Path, work: Path) -> tuple[Path, Batch1Report, dict]:
    """Batch-1 specialization, then quant_pre_process; returns the prepared model's path."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, report = specialize_batch1(onnx.load(str(fp32)))
    ensure_node_names(model)
    b1 = work / "batch1.onnx"
    onnx.save(model, str(b1))
    try:
        import sympy  # noqa: F401  (symbolic shape inference needs it)
        symbolic = True
    except ImportError:
        symbolic = False
    out = work / "prepared.onnx"
    with contextlib.redirect_stdout(_io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(b1), str(out), skip_symbolic_shape=not symbolic)
    if not out.is_file():
        raise DetzooError(f"onnxruntime could not optimize the batch-1 model of {fp32.name}")
    prepared = onnx.load(str(out))
    if ensure_node_names(prepared):
        onnx.save(prepared, str(out))
    info = {"quant_pre_process": {"symbolic_shape_inference": symbolic, "ort_optimization": "basic",
                                  "note": None if symbolic else "sympy not installed: ONNX shape inference only "
                                  "(the batch-1 pass already makes every network shape static)"}}
    return out, report, info


def _variant_files(m: Manifest, cfg: QuantizeConfig) -> dict[str, str]:
    wanted = [v for v, on in (("fp32_batch1", cfg.fp32_batch1), ("fp16", cfg.fp16), ("int8", cfg.int8)) if on]
    return {v: f"{m.name}.{v.replace('_', '-')}.onnx" for v in wanted}


def _refuse_existing(folder: Path, m: Manifest, files: dict[str, str], force: bool) -> None:
    if force:
        return
    present = [f for v, f in files.items() if v in m.variants or (folder / f).exists()]
    if present:
        raise DetzooError(f"{folder} already holds {', '.join(present)}; pass --force to replace "
                          f"{'it' if len(present) == 1 else 'them'}")


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def quantize(cfg: QuantizeConfig, progress=None) -> QuantizeResult:
    """Build the requested variants, check their fidelity, then install them and update the manifest."""
    import onnx

    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    folder = cfg.folder
    m = Manifest.load(folder)
    if "fp32" not in m.variants:
        integer = [v for v in m.variants.values() if v.settings.get("source_precision") == "int8"]
        if integer:
            raise DetzooError(f"{integer[0].file} in {folder} is the conversion of an integer source, already "
                              "the entry's int8 variant; detzoo does not quantize it again (fp16 and int8 "
                              "variants are made from float sources)")
        raise DetzooError(f"manifest in {folder} has no fp32 variant; it has {sorted(m.variants)}")
    fp32 = m.checked_artifact(folder, "fp32")
    # Calibration and the checks see exactly what evaluation feeds: with --feed-size, the zoo's resize first.
    qio = fed_io(m.io, cfg.feed_size)
    if not cfg.allow_unsafe_ops:  # calibration runs the model: scan it first, as every runner does
        from detzoo.safety import scan_onnx

        scan_onnx(onnx.load(str(fp32), load_external_data=False), f"ONNX model {fp32.name}")
    files = _variant_files(m, cfg)
    _refuse_existing(folder, m, files, cfg.force)
    notes: list[str] = []

    check_folder = cfg.check_images or demo_dir("check")
    check_files = check_image_paths(check_folder, cfg.check_limit)
    calib = None
    if cfg.int8:
        calib_folder = cfg.calib_images or demo_dir("calib")
        calib = pick_calibration_images(calib_folder, cfg.calib_count, check_files, at_most=DEFAULT_CALIB_LIMIT)
        if calib.overlap:
            notes.append(f"{len(calib.overlap)} calibration image(s) also among the check images "
                         f"({', '.join(calib.overlap[:3])}{', ...' if len(calib.overlap) > 3 else ''}): "
                         "their fidelity is not held-out")
            if cfg.max_drop is not None:
                overlap = set(calib.overlap)
                check_files = [p for p in check_files if p.name not in overlap]
                if not check_files:
                    raise DetzooError(f"every check image in {check_folder} is also a calibration image; "
                                      "--max-drop needs held-out images (pass --check-images)")
                notes[-1] += f"; --max-drop measures on the {len(check_files)} check images that are not"
        fp32_model = onnx.load(str(fp32), load_external_data=False)
        check_feedable(fp32_model, qio, decode_image(calib.files[0]))
        del fp32_model

    machine = machine_info()
    remove_stale_temporaries(folder)
    with tempfile.TemporaryDirectory(prefix="detzoo-quantize-") as tmp:
        work = Path(tmp)
        say("preparing: batch-1 specialization and onnxruntime basic optimization")
        prepared, b1, prep_info = prepare(fp32, work)
        model = onnx.load(str(prepared))
        plan = make_plan(model)
        say(f"precision plan: {plan.summary()}")
        probe = FidelityProbe(fp32, qio, check_files, cfg.threads, cfg.allow_unsafe_ops)
        if probe.reference_boxes == 0:
            msg = (f"the fp32 model detects nothing >= 0.5 on the {len(probe.images)} check images in "
                   f"{check_folder}, so fidelity cannot be measured")
            if cfg.max_drop is not None:
                raise DetzooError(msg + "; --max-drop needs check images with detections (pass --check-images)")
            notes.append(msg)
        if calib is not None and len(calib.sizes) == 1:
            only = next(iter(calib.sizes))
            check_sizes = sorted({f"{w}x{h}" for h, w in probe.sizes.values()})
            if only not in check_sizes:
                notes.append(f"all {len(calib.files)} calibration images are {only}, none of the check images is "
                             f"({', '.join(check_sizes[:3])}{', ...' if len(check_sizes) > 3 else ''}): the model "
                             "resizes inside its graph, so the ranges still describe its tensors; calibrate on "
                             "images like the ones it will see")
        common = {"parent_sha256": m.variants["fp32"].sha256, "allow_unsafe_ops": cfg.allow_unsafe_ops,
                  "feed_size": list(cfg.feed_size) if cfg.feed_size else None,
                  "batch1": b1.to_json(), **prep_info,
                  "check_images": {"folder": str(check_folder), "count": len(probe.images), "ids": probe.names,
                                   "skipped": probe.skipped}}
        built: dict[str, tuple[Path, dict, dict]] = {}
        fidelity: dict = {}

        if cfg.fp32_batch1:
            say("fp32 batch-1: checking the prepared model against the fp32 artifact")
            path = work / files["fp32_batch1"]
            shutil.copyfile(prepared, path)
            parity = _parity(fp32, path, qio, probe, cfg.threads, cfg.allow_unsafe_ops)
            fid = probe.measure(path).to_json()
            fidelity["fp32_batch1"] = fid
            if not parity["passed"]:
                raise CheckFailed(f"the batch-1 fp32 model does not match {fp32.name}: max |score diff| "
                                  f"{parity['max_score_diff']:.2e}, max |box diff| {parity['max_box_diff']:.2e} "
                                  "(tolerance 1e-4); nothing was written")
            built["fp32_batch1"] = (path, {**common, "precision_note": "fp32, batch fixed to 1, Loops inlined, "
                                           "onnxruntime basic optimizations applied"},
                                    {"parity": parity, "fidelity": fid})

        if cfg.fp16:
            from detzoo.quantize.fp16 import convert_to_fp16

            say("fp16: converting the network")
            path = work / files["fp16"]
            onnx.save(convert_to_fp16(model, set(plan.reduced())), str(path))
            fid = probe.measure(path).to_json()
            fidelity["fp16"] = fid
            settings = {**common, "plan": plan.to_json(), "fp16_nodes": len(plan.reduced()),
                        "converter": "detzoo.quantize.fp16 (plan-driven; Casts at region boundaries)"}
            built["fp16"] = (path, settings, {"fidelity": fid})

        search_json = None
        if cfg.int8:
            from detzoo.quantize.int8 import int8_op_types, quantize_int8, stem_exclusions
            from detzoo.quantize.weights import collect_layer_stats, saturation_report

            settings8 = cfg.int8_settings()
            plan = plan.copy()  # int8's exclusions are its own; fp16 has recorded its plan already
            for node, why in stem_exclusions(model, plan).items():
                plan.exclude(node, why)
            int8_source, cle_json = prepared, None
            if cfg.cle:
                int8_source, cle_json = equalize_prepared(prepared, model, calib, qio, work, say)
            cache = work / "calibration.json"
            say(f"int8: calibrating on {len(calib.files)} images ({cfg.calib_method.value})")
            calibrate(int8_source, calib, qio, cfg.calib_method, int8_op_types(plan), settings8.calibrator_options(),
                      cache)
            stats = None
            if settings8.weight_config.needs_stats:
                say("int8: layer input statistics for bias correction" + (" and AdaRound" if cfg.adaround else ""))
                stats = collect_layer_stats(int8_source, plan.reduced({"Conv"}),
                                            (preprocess(decode_image(p), qio) for p in calib.files), cfg.threads)
            path = work / files["int8"]
            quantized = quantize_int8(int8_source, plan, settings8, cache, path, stats)
            fid = probe.measure(path)
            say(f"int8: fidelity AP {fid.ap if fid.ap is None else round(fid.ap, 4)} with {len(quantized)} nodes quantized")
            if cfg.max_drop is not None:
                path, quantized, fid, search_json = _accuracy_search(cfg.max_drop, int8_source, plan, settings8, cache,
                                                                     work, files["int8"], quantized, fid, probe,
                                                                     calib, qio, say, stats)
            say(f"int8: {len(plan.excluded)} network nodes kept float")
            fidelity["int8"] = fid.to_json()
            portability = saturation_report(onnx.load(str(path)))
            if not portability["saturation_safe"]:
                notes.append(f"int8 target {settings8.target.value}: {portability['unsafe_count']} weight(s) can "
                             "saturate on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI); run this artifact "
                             "only where VNNI or ARM kernels accumulate in int32")
            speed = speed_probe(fp32, path, qio, probe.images[0][1], cfg.threads, cfg.allow_unsafe_ops)
            settings = {**common, "plan": plan.to_json(), "int8": {**settings8.to_json(), "cle": cle_json},
                        "portability": portability,
                        "speed_probe": speed,
                        "calibration": calib.to_json(), "quantized_nodes": len(quantized),
                        "excluded_nodes": dict(plan.excluded), "machine": machine}
            if search_json is not None:
                settings["accuracy_search"] = search_json
            built["int8"] = (path, settings, {"fidelity": fid.to_json()})

        # Install: stage every artifact in the folder, then put them in place with the manifest as
        # one journaled commit, so files and recorded sha256s never disagree, even after a kill.
        staged = {}
        any_batch = not batch_of_one(onnx.load(str(fp32), load_external_data=False))
        batch_images = [decode_image(p) for _, p in probe.images[:2]]
        with contextlib.ExitStack() as stack:
            for name, (path, settings, checks) in built.items():
                tmp = staged[files[name]] = stack.enter_context(staging(folder, ".onnx"))
                art = onnx.load(str(path))
                if any_batch and name != "fp32_batch1":  # the batch-1 build gets any batch back: a Loop over the images
                    art = with_any_batch(art, first_outside=name == "fp16")
                    checks = {**checks, "batch": batch_check(path, art, m.io, batch_images, cfg.allow_unsafe_ops)}
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
    result = QuantizeResult(m, {n: folder / files[n] for n in built}, fidelity, plan, b1, search_json, notes,
                            time.perf_counter() - t0)
    return result


def fed_io(io, feed_size):
    """``io`` with the zoo's feeding in front: an OpenCV resize to ``feed_size`` before the model."""
    if not feed_size:
        return io
    from detzoo.source import IOSpec

    return IOSpec.from_dict({**io.to_dict(), "resize": list(feed_size), "resize_with": "cv2"})


def with_any_batch(model, first_outside: bool = False):
    """The batch-1 model inside the contract's Loop over the batch (no preprocessing: it is already inside).

    fp16 runs its first image at the top level: inside a Loop body onnxruntime casts fp16 weights
    on every call (78 vs 35 ms at batch 1 on the default); int8 keeps every image in the body,
    whose own weights onnxruntime fuses into QLinearConv (BENCHMARKS.md, contract)."""
    from detzoo.contract import wrap

    return wrap(model, input_name=model.graph.input[0].name, output_names=[o.name for o in model.graph.output],
                first_outside=first_outside)


def batch_check(batch1: Path, wrapped, io, images: list, allow_unsafe_ops: bool = False) -> dict:
    """Run the wrapped artifact on a batch of images of one size and compare each row with the batch-1
    model on that image alone, detection by detection with the parity tolerances: the Loop must change
    nothing but float rounding (onnxruntime may pick other kernels inside a Loop body)."""
    import numpy as np

    from detzoo.convert.parity import ParityReport, ParityTolerance
    from detzoo.detections import Detections, agreement
    from detzoo.runners import OrtRunner, resize_like_cv2

    if not images:
        return {"checked": False, "why": "no check image decoded"}
    h, w = images[0].shape[:2]
    batch = np.concatenate([preprocess(resize_like_cv2(im, h, w) if im.shape[:2] != (h, w) else im, io)
                            for im in (images * 2)[:2]])
    tol = ParityTolerance()
    with tempfile.TemporaryDirectory(prefix="detzoo-batch-") as tmp:
        import onnx

        wp = Path(tmp) / "wrapped.onnx"
        onnx.save(wrapped, str(wp))
        with OrtRunner(batch1, io, allow_unsafe_ops=allow_unsafe_ops) as one, \
                OrtRunner(wp, io, allow_unsafe_ops=allow_unsafe_ops) as many:
            together = many.infer(batch)
            diff, pairs = 0.0, []
            for i in range(len(batch)):
                alone = one.infer(batch[i:i + 1])
                diff = max(diff, *(float(np.max(np.abs(a[0] - t[i]))) if a.size else 0.0
                                   for a, t in zip(alone, together)))
                row = [t[i:i + 1] for t in together]
                pairs.append((str(i), (h, w), Detections.from_od_api(*alone, image_hw=(h, w)),
                              Detections.from_od_api(*row, image_hw=(h, w))))
    a = agreement(pairs, tol.min_score, tol.iou)
    if not ParityReport(a, tol, []).passed:
        raise CheckFailed(f"the batch Loop changed the detections: max |score diff| {a.max_score_diff:.2e}, max "
                          f"|box diff| {a.max_box_diff:.2e}, unmatched {a.unmatched_reference + a.unmatched_candidate}"
                          "; nothing was written")
    return {"checked": True, "batch": len(batch), "max_abs_diff": diff, "matched": a.matched,
            "max_score_diff": a.max_score_diff, "max_box_diff": a.max_box_diff}


def equalize_prepared(prepared: Path, model, calib, io, work: Path, say) -> tuple[Path, dict]:
    """Cross-layer equalization of the prepared model (a copy), Relu6 bounds measured on the calibration images."""
    import onnx

    from detzoo.quantize.cle import channel_max, equalize, pairs

    found = pairs(model)
    name = model.graph.input[0].name
    tensors = sorted({next(n for n in model.graph.node if n.name == p.conv1).output[0] for p in found
                      if p.clip_max is not None})
    say(f"int8: cross-layer equalization of {len(found)} convolution pairs")
    act_max = channel_max(prepared, tensors, ({name: preprocess(decode_image(p), io)} for p in calib.files))
    eq = onnx.load(str(prepared))
    report = equalize(eq, act_max, iterations=2)
    out = work / "prepared_cle.onnx"
    onnx.save(eq, str(out))
    return out, report.to_json()


def _parity(fp32: Path, candidate: Path, io, probe: FidelityProbe, threads: int, allow_unsafe_ops: bool = False) -> dict:
    """The convert stage's parity figures (matched detections' score and box differences) on the check images."""
    from detzoo.convert.parity import ParityTolerance
    from detzoo.detections import agreement
    from detzoo.images import decode_image as decode
    from detzoo.runners import OrtRunner

    tol = ParityTolerance()
    with OrtRunner(fp32, io, threads, allow_unsafe_ops=allow_unsafe_ops) as a, \
            OrtRunner(candidate, io, threads, allow_unsafe_ops=allow_unsafe_ops) as b:
        pairs = []
        for k, p in probe.images:
            img = decode(p)
            pairs.append((p.name, img.shape[:2], a.detect(img), b.detect(img)))
    ag = agreement(pairs, tol.min_score, tol.iou)
    passed = (ag.max_score_diff <= tol.score_atol and ag.max_box_diff <= tol.box_atol
              and ag.unmatched_reference + ag.unmatched_candidate <= tol.max_unmatched)
    return {"passed": passed, **ag.to_json(), "tolerance": {"score_atol": tol.score_atol, "box_atol": tol.box_atol}}


def _accuracy_search(max_drop, prepared, plan, settings8, cache, work, file_name, quantized, fid, probe, calib, io,
                     say, stats=None):
    """Return sensitive nodes to float, 1, 2, 4, ... at a time, until the drop fits ``max_drop * SEARCH_TARGET``.

    The budget itself (``max_drop``) decides success; the tighter aim leaves margin for images other
    than the check images.
    """
    from detzoo.quantize.int8 import quantize_int8
    from detzoo.quantize.search import SearchLog, SearchStep, followers_of, rank_sensitivity

    import onnx

    log = SearchLog(max_drop, round(max_drop * SEARCH_TARGET, 3))
    aim = log.target
    path = work / file_name
    log.steps.append(SearchStep(0, [], len(quantized), fid.to_json()))
    if fid.drop_points <= aim:
        log.met = True
        return path, quantized, fid, log.to_json()
    say("int8: ranking quantized nodes by the output error each causes alone")
    ranked = rank_sensitivity(prepared, plan, quantized, cache, settings8, calib.files[:RANK_IMAGES], io, stats)
    log.ranking = list(ranked)
    model = onnx.load(str(prepared))
    take, step = 1, 0
    while fid.drop_points > aim and ranked:
        step += 1
        batch, ranked = ranked[:take], ranked[take:]
        returned = []
        for node, nsr in batch:
            why = f"accuracy search step {step}: output noise-to-signal {nsr:.2e} when quantized alone"
            for n in [node, *followers_of(model, node, set(quantized))]:
                plan.exclude(n, why)
                returned.append(n)
        if not plan.reduced(INT8_OPS):
            break
        path = work / f"step{step}_{file_name}"
        quantized = quantize_int8(prepared, plan, settings8, cache, path, stats)
        fid = probe.measure(path)
        log.steps.append(SearchStep(step, returned, len(quantized), fid.to_json()))
        say(f"int8: step {step}: {len(returned)} node(s) back to float, drop {fid.drop_points:.2f} points")
        take *= 2
    log.met = fid.drop_points <= max_drop
    if not log.met:
        raise CheckFailed(f"int8 cannot meet --max-drop {max_drop}: best drop {fid.drop_points:.2f} AP points "
                          f"after returning {len(plan.excluded)} nodes to float; nothing was written")
    return path, quantized, fid, log.to_json()
