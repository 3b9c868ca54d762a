"""``detzoo quantize``: fp16 and int8 variants of a folder's fp32 artifact, recorded in its manifest.

Both variants start from the same *prepared* model: the fp32 artifact with its batch fixed to one
and its map_fn Loops inlined (batch1.py), then onnxruntime's basic optimizations through
``quant_pre_process`` (prepare.py). The precision plan (plan.py) then says which nodes change
precision. All heavy work happens in a temporary folder; only at the end are the artifacts renamed
into place and the manifest saved, last (install.py), so a killed run leaves the previous
artifacts and manifest as they were.

Owns the composition: which passes run, in which order, on which images and files, and what the
manifest records of them. Must not touch a graph itself: every rewrite is a pass's (prepare.py,
plan.py, fp16.py, cle.py, calibration.py, int8.py, search.py), every check is checks.py's or
fidelity.py's, and writing the entry is install.py's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from detzoo import options as O
from detzoo.contract import batch_of_one
from detzoo.cpu import speed_line
from detzoo.errors import CheckFailed, DetzooError
from detzoo.fsutil import remove_stale_temporaries
from detzoo.images import decode_image, demo_dir
from detzoo.manifest import Manifest, machine_info
from detzoo.quantize import calibration, checks, cle, fp16, int8, search
from detzoo.quantize import plan as precision
from detzoo.quantize.batch1 import Batch1Report
from detzoo.quantize.calibration import CalibMethod, CalibrationImages, fed_io
from detzoo.quantize.fidelity import FidelityProbe, check_image_paths
from detzoo.quantize.install import install, refuse_existing, variant_files
from detzoo.quantize.plan import PrecisionPlan
from detzoo.quantize.prepare import run as prepare
from detzoo.runners import preprocess
from detzoo.source import IOSpec

DEFAULT_CALIB_LIMIT = 256  # without --calib-count: the folder's first 256 usable images


@dataclass
class QuantizeConfig:
    folder: Path
    fp16: bool = O.FP16.default
    int8: bool = O.INT8.default
    calib_images: Path | None = O.CALIB_IMAGES.default    # default: the demo calibration frames
    calib_count: int | None = O.CALIB_COUNT.default      # default: all usable images, at most DEFAULT_CALIB_LIMIT
    calib_method: CalibMethod = CalibMethod(O.CALIB_METHOD.default)
    per_channel: bool = O.PER_CHANNEL.default
    int8_target: str = O.INT8_TARGET.default             # portable: exact on every CPU; vnni: full 8-bit weights
    reduce_range: bool | None = O.REDUCE_RANGE.default   # True: 7-bit weights everywhere; None: the target's choice
    bias_correction: bool = O.BIAS_CORRECTION.default
    adaround: bool = O.ADAROUND.default
    cle: bool = O.CLE.default             # cross-layer equalization before calibration (BENCHMARKS.md: it
                                          # loses fidelity with per-channel weights; kept for ablation)
    max_drop: float | None = O.SEARCH_MAX_DROP.default   # AP points the int8 variant may lose on the check images
    check_images: Path | None = O.CHECK_IMAGES.default   # default: the demo evaluation frames
    check_limit: int | None = O.CHECK_LIMIT.default
    force: bool = O.FORCE.default
    threads: int = O.THREADS.default
    fp32_batch1: bool = O.FP32_BATCH1.default  # also install the prepared fp32 model (batch 1, Loops inlined)
    allow_unsafe_ops: bool = O.ALLOW_UNSAFE_OPS.default  # quantize an fp32 artifact with custom-domain ops (recorded)
    feed_size: tuple | None = O.FEED_SIZE.default  # calibrate and check on images fed as verify --feed-size feeds them

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
        O.check(self, O.CALIB_COUNT, O.SEARCH_MAX_DROP, O.CHECK_LIMIT, O.THREADS)
        if self.max_drop is not None and not self.int8:
            raise DetzooError("--max-drop applies to the int8 variant, but --no-int8 was given")
        self.int8_settings()  # contradictions (--reduce-range against the target) are bad input

    def int8_settings(self) -> int8.Int8Settings:
        return int8.Int8Settings(calib_method=self.calib_method, per_channel=self.per_channel, target=self.int8_target,
                            reduce_range=self.reduce_range, bias_correction=self.bias_correction,
                            adaround=self.adaround)


@dataclass
class QuantizeResult:
    manifest: Manifest
    artifacts: dict                     # variant name -> Path
    fidelity: dict                      # variant name -> Fidelity.to_json()
    plan: PrecisionPlan                 # int8's, with its exclusions, when int8 was built
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


@dataclass(frozen=True)
class _Build:
    """What every variant's build shares."""

    cfg: QuantizeConfig
    fp32: Path
    work: Path
    prepared: Path          # the prepared model (prepare.py) ...
    model: object           # ... and the same, loaded
    io: IOSpec              # the manifest's IO with the feeding in front (fed_io)
    probe: FidelityProbe    # the check images, with the fp32 artifact's detections
    files: dict             # variant name -> its file name in the entry
    common: dict            # the settings every variant records
    notes: list             # warnings for the user, appended to
    say: Callable


def _fp32_batch1(b: _Build) -> tuple:
    """The prepared model itself, parity-checked against the fp32 artifact with convert's check."""
    b.say("fp32 batch-1: checking the prepared model against the fp32 artifact")
    path = b.work / b.files["fp32_batch1"]
    shutil.copyfile(b.prepared, path)
    parity = checks.parity(b.fp32, path, b.io, [p for _, p in b.probe.images], b.cfg.threads,
                           b.cfg.allow_unsafe_ops)
    fid = b.probe.measure(path).to_json()
    if not parity.passed:
        raise CheckFailed(f"the batch-1 fp32 model does not match {b.fp32.name}: {parity.summary()}; "
                          "nothing was written")
    return (path, {**b.common, "precision_note": "fp32, batch fixed to 1, Loops inlined, onnxruntime basic "
                   "optimizations applied"}, {"parity": checks.parity_record(parity), "fidelity": fid}), fid


def _fp16(b: _Build, plan: PrecisionPlan) -> tuple:
    """The plan's network nodes in float16."""
    import onnx

    b.say("fp16: converting the network")
    path = b.work / b.files["fp16"]
    onnx.save(fp16.run(b.model, set(plan.reduced())), str(path))
    fid = b.probe.measure(path).to_json()
    settings = {**b.common, "plan": plan.to_json(), "fp16_nodes": len(plan.reduced()),
                "converter": "detzoo.quantize.fp16 (plan-driven; Casts at region boundaries)"}
    return (path, settings, {"fidelity": fid}), fid


def _int8(b: _Build, plan: PrecisionPlan, calib: CalibrationImages, machine: dict) -> tuple:
    """Stem exclusions, optional CLE, calibration, layer statistics, the int8 pass and, with --max-drop,
    the accuracy search; ``plan`` takes int8's exclusions."""
    import onnx

    from detzoo.quantize.weights import collect_layer_stats, saturation_report

    cfg, say = b.cfg, b.say
    settings8 = cfg.int8_settings()
    for node, why in int8.stem_exclusions(b.model, plan).items():
        plan.exclude(node, why)
    source, cle_json = b.prepared, None
    if cfg.cle:
        source, cle_json = cle.run(b.prepared, b.model, calib, b.io, b.work, say)
    cache = b.work / "calibration.json"
    say(f"int8: calibrating on {len(calib.files)} images ({cfg.calib_method.value})")
    calibration.run(source, calib, b.io, int8.int8_op_types(plan), cache, settings8.calibration())
    for node, why in int8.nonfinite_exclusions(onnx.load(str(source)), plan,
                                               calibration.nonfinite(cache)).items():
        plan.exclude(node, why)
    stats = None
    if settings8.weight_config.needs_stats:
        say("int8: layer input statistics for bias correction" + (" and AdaRound" if cfg.adaround else ""))
        stats = collect_layer_stats(source, plan.reduced({"Conv"}),
                                    (preprocess(decode_image(p), b.io) for p in calib.files), cfg.threads)
    path = b.work / b.files["int8"]
    quantized = int8.run(source, plan, settings8, cache, path, stats)
    fid = b.probe.measure(path)
    say(f"int8: fidelity AP {fid.ap if fid.ap is None else round(fid.ap, 4)} with {len(quantized)} nodes quantized")
    search_json = None
    if cfg.max_drop is not None:
        ctx = search.SearchContext(source=source, plan=plan, settings=settings8, cache=cache, work=b.work,
                                   file_name=b.files["int8"], probe=b.probe, calib_files=calib.files, io=b.io,
                                   stats=stats, say=say)
        found = search.run(search.SearchConfig(cfg.max_drop), ctx, quantized, fid)
        path, quantized, fid, search_json = found.path, found.quantized, found.fidelity, found.log
    say(f"int8: {len(plan.excluded)} network nodes kept float")
    portability = saturation_report(onnx.load(str(path)))
    if not portability["saturation_safe"]:
        b.notes.append(f"int8 target {settings8.target.value}: {portability['unsafe_count']} weight(s) can "
                       "saturate on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI); run this artifact "
                       "only where VNNI or ARM kernels accumulate in int32")
    speed = checks.speed_probe(b.fp32, path, b.io, b.probe.images[0][1], cfg.threads, cfg.allow_unsafe_ops)
    settings = {**b.common, "plan": plan.to_json(), "int8": {**settings8.to_json(), "cle": cle_json},
                "portability": portability,
                "speed_probe": speed,
                "calibration": calib.to_json(), "quantized_nodes": len(quantized),
                "excluded_nodes": dict(plan.excluded), "machine": machine}
    if search_json is not None:
        settings["accuracy_search"] = search_json
    return (path, settings, {"fidelity": fid.to_json()}), fid.to_json(), search_json


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
    files = variant_files(m, cfg.fp32_batch1, cfg.fp16, cfg.int8)
    refuse_existing(folder, m, files, cfg.force)
    notes: list[str] = []

    check_folder = cfg.check_images or demo_dir("check")
    check_files = check_image_paths(check_folder, cfg.check_limit)
    calib = None
    if cfg.int8:
        calib_folder = cfg.calib_images or demo_dir("calib")
        calib = calibration.pick_calibration_images(calib_folder, cfg.calib_count, check_files,
                                                    at_most=DEFAULT_CALIB_LIMIT)
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
        calibration.check_feedable(fp32_model, qio, decode_image(calib.files[0]))
        del fp32_model

    machine = machine_info()
    remove_stale_temporaries(folder)
    with tempfile.TemporaryDirectory(prefix="detzoo-quantize-") as tmp:
        work = Path(tmp)
        say("preparing: batch-1 specialization and onnxruntime basic optimization")
        prepared, b1, prep_info = prepare(fp32, work)
        model = onnx.load(str(prepared))
        plan = precision.run(model)
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
        b = _Build(cfg, fp32, work, prepared, model, qio, probe, files, common, notes, say)
        built: dict[str, tuple[Path, dict, dict]] = {}
        fidelity: dict = {}
        if cfg.fp32_batch1:
            built["fp32_batch1"], fidelity["fp32_batch1"] = _fp32_batch1(b)
        if cfg.fp16:
            built["fp16"], fidelity["fp16"] = _fp16(b, plan)
        search_json = None
        if cfg.int8:
            plan = plan.copy()  # int8's exclusions are its own; fp16 has recorded its plan already
            built["int8"], fidelity["int8"], search_json = _int8(b, plan, calib, machine)

        install(folder, m, built, files, any_batch=not batch_of_one(onnx.load(str(fp32), load_external_data=False)),
                batch_images=[decode_image(p) for _, p in probe.images[:2]], allow_unsafe_ops=cfg.allow_unsafe_ops)
    return QuantizeResult(m, {n: folder / files[n] for n in built}, fidelity, plan, b1, search_json, notes,
                          time.perf_counter() - t0)

