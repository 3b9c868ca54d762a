"""``detzoo verify``: accuracy and latency of every artifact against its source, and the accuracy gate.

Reads ``DIR/manifest.json``, runs the source and each artifact on the same images (through the
detection cache), evaluates with pycocotools, times the models apart from that pass, and writes
``report.json`` and ``REPORT.md``; the manifest is updated last. The gate (exit 1) is raised only
after everything is written, so a failing report can be read.

Owns: VerifyConfig, the plan, the local executor, the pipeline's order and what verify writes.
Does not touch: COCO arithmetic (detzoo.coco), rendering (markdown/html), how a model runs (runners).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detzoo.errors import CheckFailed, DetzooError
from detzoo.fsutil import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from detzoo.images import ImageError, decode_image, demo_dir, folder_records
from detzoo.manifest import MANIFEST, Manifest, machine_info, now, tool_versions
from detzoo.options import (LATENCY_IMAGES, REFERENCE_THRESHOLD, SEED, VARIANTS, MeasureOptions, check)

from detzoo.verify.report import (REPORT_JSON, CocoSummary, DataInfo, Gate, LatencySetup, ModelLatency, ModelReport,
                                  VerifyReport)

REPORT_MD, PR_ARRAYS = "REPORT.md", "pr_arrays.npz"


@dataclass
class VerifyConfig(MeasureOptions):
    """What to verify and how; the measuring options come from ``MeasureOptions``. ``max_drop`` is
    in points (mAP x 100), like the zoo's budgets."""

    folder: Path
    latency_images: int = LATENCY_IMAGES.default
    seed: int = SEED.default
    variants: list | None = VARIANTS.default
    reference_threshold: float = REFERENCE_THRESHOLD.default
    use_cache: bool = True
    cache_only: bool = False  # merging shards: every detection must come from the cache

    def __post_init__(self):
        self.folder = Path(self.folder)
        super().__post_init__()
        check(self, LATENCY_IMAGES, SEED)
        if self.cache_only and not self.use_cache:
            raise DetzooError("cache_only needs use_cache: merged shards are read from the detection cache")
        if not 0 < self.reference_threshold < 1:
            raise DetzooError(f"--reference-threshold must be in (0, 1), got {self.reference_threshold}")
        if self.variants is not None:
            self.variants = [v for v in self.variants if v]
            if not self.variants:
                raise DetzooError("--variants is empty; expected names such as fp32,fp16,int8")


@dataclass
class VerifyResult:
    report: VerifyReport
    report_json: Path
    report_md: Path
    warnings: list = field(default_factory=list)

    @property
    def failed(self) -> list:
        return self.report.gate.failed

    @property
    def passed(self) -> bool:
        return self.report.passed


def select_variants(m: Manifest, wanted) -> list[str]:
    if not m.variants:
        raise DetzooError("the manifest lists no artifacts to verify; run 'detzoo convert' first")
    names = wanted or list(m.variants)
    unknown = [n for n in names if n not in m.variants]
    if unknown:
        raise DetzooError(f"--variants names {', '.join(unknown)}, which the manifest does not have; "
                          f"it has {', '.join(m.variants)}")
    return list(dict.fromkeys(names))


def model_io(manifest: Manifest, name: str):
    """The IO spec a model is fed with: the source's own, or the variant's (the entry's by default)."""
    return manifest.source_spec() if name == "source" else manifest.variant_io(name)


def cache_io(manifest: Manifest, name: str, feed_size) -> dict:
    """What decides a model's cached detections besides its sha256: its IO spec and the feeding."""
    d = model_io(manifest, name).to_dict()
    return {**d, "feed_size": list(feed_size)} if feed_size else d


def check_feed(manifest: Manifest, names: list, feed_size) -> None:
    """--feed-size feeds every model the same resized pixels: a variant fixed to another size cannot take them."""
    if not feed_size:
        return
    for n in names:
        io = manifest.variant_io(n)
        hw = io.input.fixed_hw
        if hw is not None and list(hw) != list(feed_size):
            raise DetzooError(f"--feed-size {feed_size[0]}x{feed_size[1]}: variant {n} takes only {hw[0]}x{hw[1]} "
                              f"images; leave it out (--variants) or feed {hw[0]}x{hw[1]}")


def model_runner(manifest: Manifest, name: str, path, src, threads: int, allow_unsafe_ops: bool = False):
    """The runner of the source or of a variant (ONNX, or TFLite brought in with ``detzoo add``)."""
    from detzoo.runners import OrtRunner, TFLiteRunner, source_runner

    if name == "source":
        return source_runner(src.format, src.path, manifest.source_spec(), threads, allow_unsafe_ops=allow_unsafe_ops)
    cls = TFLiteRunner if manifest.variants[name].format == "tflite" else OrtRunner
    return cls(path, manifest.variant_io(name), threads, label=name, allow_unsafe_ops=allow_unsafe_ops)


def verify_records(cfg: VerifyConfig):
    """(mode, ground truth or None, image records, images dir)."""
    if cfg.annotations is not None:
        from detzoo.coco import coco_records, load_instances

        if not cfg.images.is_dir():
            raise DetzooError(f"images folder not found: {cfg.images}")
        if not any(cfg.images.iterdir()):
            raise DetzooError(f"images folder {cfg.images} is empty; expected the images of {cfg.annotations.name}")
        gt = load_instances(cfg.annotations)
        return "ground_truth", gt, coco_records(gt, cfg.images, cfg.limit), cfg.images
    images = cfg.images or demo_dir("eval")
    return "reference", None, folder_records(images, cfg.limit), images


class Progress:
    """Rich progress bars on a console, or nothing."""

    def __init__(self, console):
        self.console = console

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        if self.console is None:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=self.console, transient=True) as p:
            t = p.add_task(description, total=total)
            yield lambda: p.advance(t)


@dataclass
class VerifyPlan:
    """What one verification runs on, settled once before any model runs: the manifest, the
    artifacts (each sha256-checked), the images and, with annotations, the ground truth."""

    cfg: VerifyConfig
    manifest: Manifest
    names: list          # the variants verified, beside the source
    artifacts: dict      # variant -> its checked path
    mode: str            # "ground_truth" or "reference"
    gt: object           # the Instances, or None in reference mode
    records: list        # ImageRecords, in verify's order
    images_dir: Path

    @property
    def folder(self) -> Path:
        return self.cfg.folder


    def check_artifacts(self) -> "VerifyPlan":
        """Hash every artifact against the manifest (refusing a changed one) and the feeding."""
        self.artifacts = {n: self.manifest.checked_artifact(self.folder, n) for n in self.names}
        check_feed(self.manifest, self.names, self.cfg.feed_size)
        return self


def plan(cfg: VerifyConfig, check_artifacts: bool = True) -> VerifyPlan:
    """Read and check everything a verification needs; DetzooError for bad input, nothing written.
    ``check_artifacts`` False: the caller compares something else first (merge: the shards' record)
    and calls ``check_artifacts()`` itself."""
    manifest = Manifest.load(cfg.folder)
    names = select_variants(manifest, cfg.variants)
    p = VerifyPlan(cfg, manifest, names, {}, "", None, [], cfg.folder)
    if check_artifacts:
        p.check_artifacts()  # before the annotations are parsed: a changed model is named first
    p.mode, p.gt, p.records, p.images_dir = verify_records(cfg)
    return p


class LocalExecutor:
    """Runs every model on every image here (cached detections are read, not recomputed); with
    ``cfg.cache_only`` (merging shards) a missing detection is an error. verify/distributed.py's
    RayExecutor is the other executor: it fills the cache on a cluster, then reads it like this."""

    load_models = True  # load every model before the pass, so a broken artifact fails before any work

    def __call__(self, p: VerifyPlan, models: list, progress: Progress):
        from detzoo.verify.accuracy import collect_detections

        with progress.task(f"accuracy pass ({len(models)} models)", len(p.records)) as advance:
            return collect_detections(models, p.records, advance, cache_only=p.cfg.cache_only,
                                      feed_size=p.cfg.feed_size)


def verify(cfg: VerifyConfig, console=None, executor=None) -> VerifyResult:
    """Verify the artifacts in ``cfg.folder``; ``console`` (rich) shows progress and warnings.

    Raises DetzooError for bad input before anything is written, and CheckFailed (after writing
    the report and manifest) when an artifact's drop exceeds ``cfg.max_drop``.
    """
    return run(plan(cfg), console, executor)


def run(p: VerifyPlan, console=None, executor=None) -> VerifyResult:
    """The pipeline after planning: detect (``executor``, local by default) -> evaluate -> latency
    -> report, written with the manifest last; the gate is raised after everything is written."""
    from detzoo.source import open_source
    from detzoo.verify.accuracy import evaluate_models
    from detzoo.verify.latency import measure_latency
    from detzoo.verify.markdown import render_markdown

    t_start = time.perf_counter()
    cfg, manifest, folder, records = p.cfg, p.manifest, p.folder, p.records
    executor = executor or LocalExecutor()
    data_notes = list(getattr(p.gt, "warnings", ()))  # what loading the annotations found unusual but kept
    progress = Progress(console)
    seconds = {}

    with open_source(manifest.source["path"], expected_sha256=manifest.source.get("sha256")) as src, \
            contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        models = open_models(p, src, stack, load=executor.load_models)
        seconds["load"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        collected = executor(p, models, progress)
        seconds["accuracy_pass"] = time.perf_counter() - t0
        seconds["inference"] = sum(collected.inference_seconds.values())

        t0 = time.perf_counter()
        accuracy, _ = evaluate_models(collected, p.gt, cfg.reference_threshold, cfg.bootstrap, cfg.seed,
                                      manifest.io.label_map)
        seconds["evaluation"] = time.perf_counter() - t0

        latency, latency_keys, latency_notes = {}, [], []
        if cfg.latency_runs:
            t0 = time.perf_counter()
            good = [r for r in records if r.image_id in collected.sizes][:max(cfg.latency_images, cfg.batch)]
            images = []
            for r in good:
                with contextlib.suppress(ImageError):
                    images.append(fed_image(decode_image(r.path), cfg.feed_size))
                    latency_keys.append(r.key)
            batches, latency_notes = latency_batches(models, images, cfg.batch)
            if batches:
                timed = {m.name: m.runner for m in models if m.name in batches}
                with progress.task(f"latency ({cfg.latency_runs} runs x {len(timed)} models, batch {cfg.batch})",
                                   cfg.latency_runs) as adv:
                    latency = measure_latency(timed, batches, cfg.latency_runs, on_round=adv, batch=cfg.batch)
                seconds["latency"] = time.perf_counter() - t0

    report = _build_report(cfg, manifest, p.mode, p.images_dir, records, collected, accuracy, latency, latency_keys,
                           models, seconds, t_start, data_notes + latency_notes)
    warnings = data_notes + [w for m in report.models.values() for w in m.warnings]
    for w in warnings:
        if console is not None:
            console.print(f"[yellow]warning:[/] {w}", highlight=False)

    with atomic_path(folder / PR_ARRAYS) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{name}_precision": a.coco.precision for name, a in accuracy.items()},
                                **{f"{name}_recall": a.coco.recall for name, a in accuracy.items()},
                                iou_thresholds=next(iter(accuracy.values())).coco.iou_thresholds,
                                recall_thresholds=next(iter(accuracy.values())).coco.recall_thresholds,
                                cat_ids=np.asarray(next(iter(accuracy.values())).coco.cat_ids))
    atomic_write_json(folder / REPORT_JSON, report.to_json())
    atomic_write_text(folder / REPORT_MD, render_markdown(report))
    _record_in_manifest(folder, report)  # last
    result = VerifyResult(report, folder / REPORT_JSON, folder / REPORT_MD, warnings)
    g = report.gate
    if not g.passed:
        detail = ", ".join(f"{n} drops {report.models[n].drop_points:.2f}" for n in g.failed)
        raise CheckFailed(f"accuracy budget broken: {detail} {g.metric} points (max {g.max_drop_points:g}); "
                          f"see {folder / REPORT_MD}")
    return result


def source_precision(manifest: Manifest) -> str:
    """The source's precision as convert found it (an integer TFLite is int8, a float16 one fp16)."""
    return next((v.settings["source_precision"] for v in manifest.variants.values()
                 if v.settings.get("source_precision")), "fp32")


def open_model(manifest: Manifest, name: str, path, src, threads: int, allow_unsafe_ops: bool = False, cache=None):
    """The source (``path`` None; ``src`` the opened source) or one variant as a ``Model``, not yet loaded."""
    from detzoo.verify.accuracy import Model

    runner = model_runner(manifest, name, path, src, threads, allow_unsafe_ops)
    if name == "source":
        return Model("source", "tensorflow" if src.format.value != "tflite" else "tflite", source_precision(manifest),
                     Path(manifest.source["path"]).name, src.sha256, int(manifest.source.get("size") or src.size),
                     runner, cache)
    v = manifest.variants[name]
    return Model(name, "tflite" if v.format == "tflite" else "onnxruntime", v.precision, v.file, v.sha256, v.size,
                 runner, cache)


def open_models(p: VerifyPlan, src, stack, cache_tag: str | None = None, load: bool = True) -> list:
    """The source and each variant as ``Model``s with their caches (``cache_tag``: a shard's own
    cache files), closed by ``stack``. ``load``: load every model now, so a broken artifact fails
    before any work is cached and model loading is not counted in the accuracy pass."""
    from detzoo.verify.cache import DetectionCache

    cfg, manifest = p.cfg, p.manifest

    def cache(name, sha):
        return DetectionCache(cfg.folder, sha, cache_io(manifest, name, cfg.feed_size), cache_tag) if cfg.use_cache else None

    models = [open_model(manifest, "source", None, src, cfg.threads, cfg.allow_unsafe_ops, cache("source", src.sha256))]
    models += [open_model(manifest, n, p.artifacts[n], src, cfg.threads, cfg.allow_unsafe_ops,
                          cache(n, manifest.variants[n].sha256)) for n in p.names]
    for m in models:
        stack.callback(m.runner.deactivate)
    if load:
        for m in models:
            m.runner.activate()
    return models


def fed_image(image, feed_size):
    """The pixels every model starts from: the decoded image, or the zoo runner's resize of it."""
    if not feed_size:
        return image
    from detzoo.runners import resize_like_cv2

    return resize_like_cv2(image, *feed_size)


def latency_batches(models: list, images: list, batch: int) -> tuple[dict, list]:
    """Each model's latency inputs: ``batch`` images stacked after its own preprocessing, cycling.

    A model whose input holds one image only (a source with a fixed batch of one) is left out at
    batch > 1, with a note; so is everything when the images differ in size, which a batch cannot hold.
    """
    import numpy as np

    from detzoo.runners import preprocess

    if not images:
        return {}, []
    notes = []
    if batch > 1 and len({im.shape for im in images}) > 1:
        sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
        raise DetzooError(f"--batch {batch} stacks {batch} images into one tensor, but the latency images have "
                          f"{len(sizes)} sizes ({', '.join(sizes[:3])}); pass --feed-size HxW as the zoo's "
                          "runner does, or images of one size")
    groups = [[images[(i * batch + j) % len(images)] for j in range(batch)]
              for i in range(max(1, len(images) // batch))]
    out = {}
    for m in models:
        if batch > 1 and m.runner.io.input.shape and m.runner.io.input.shape[0] == 1:
            notes.append(f"{m.name} takes one image per call: its latency is not measured at batch {batch}")
            continue
        out[m.name] = [np.concatenate([preprocess(im, m.runner.io) for im in g]) for g in groups]
    return out, notes


def _tuning_warning(manifest, name: str, evaluated_files: set) -> list[str]:
    """An artifact tuned (quantize --max-drop) on the images it is now scored on looks better than it is."""
    v = manifest.variants.get(name)
    if v is None or not v.settings.get("accuracy_search"):
        return []
    overlap = evaluated_files & set((v.settings.get("check_images") or {}).get("ids", []))
    if not overlap:
        return []
    return [f"{name} was tuned with --max-drop on {len(overlap)} of these evaluation images; "
            "its drop here may be optimistic (tune on held-out images: quantize --check-images)"]


def _speed_warning(model, lat, fp32_lat, cls: str) -> list[str]:
    """The one plain line when int8 is not faster than fp32 on this CPU class."""
    if model.precision != "int8" or lat is None or fp32_lat is None or fp32_lat.p50_ms <= 0:
        return []
    from detzoo.cpu import NOT_FASTER, speed_line

    ratio = lat.p50_ms / fp32_lat.p50_ms
    if ratio < NOT_FASTER:
        return []
    return [speed_line({"cpu_class": cls, "ratio": ratio, "int8_ms": lat.p50_ms, "fp32_ms": fp32_lat.p50_ms})]


def _source_note(folder: Path, manifest) -> list[str]:
    """The manifest can name a source anywhere: say so when it lies outside the entry (it was checked and scanned)."""
    src = Path(manifest.source["path"]).resolve()
    if src.is_relative_to(Path(folder).resolve()):
        return []
    return [f"the source the manifest names, {src}, lies outside the entry folder; it was run after its sha256 "
            "matched the manifest and its graph passed the unsafe-op scan"]


def _feeding_notes(manifest, names: list, feed_size) -> list[str]:
    """A fixed-size variant fed the zoo's way beside a source fed its own way: its drop includes the feeding's loss."""
    if feed_size:
        return []
    fixed = [n for n in names if n != "source" and manifest.variant_io(n).resize_with == "cv2"
             and manifest.variant_io(n).resize]
    if not fixed:
        return []
    return [f"{', '.join(fixed)} were fed resized with OpenCV to their fixed size, the source its own way: their "
            "drops include that feeding's loss; --feed-size HxW gives every model the same pixels"]


def _class_notes(manifest, cls: str) -> list[str]:
    """Say when earlier numbers of this entry come from a CPU of another class (latency is never compared across)."""
    notes = []
    prev = (manifest.results.get("verify") or {}).get("cpu_class")
    if prev and prev != cls:
        notes.append(f"the entry's previous verification ran on a {prev} CPU, this one on {cls}: latency was "
                     "measured afresh here and is not comparable with the earlier figures")
    built = {n: (v.settings.get("machine") or {}).get("cpu_class") for n, v in manifest.variants.items()}
    for name, b in built.items():
        speed = manifest.variants[name].settings.get("speed_probe") or {}
        if b and b != cls and speed:
            notes.append(f"{name} was built on a {b} CPU; its build-time speed probe ({speed.get('ratio')}x fp32) "
                         f"describes that class, not this {cls} one")
    return notes


def feeding(feed_size) -> str:
    """Which feeding produced the numbers, in the words the report and the card print."""
    if not feed_size:
        return "each image as decoded; every model's own preprocessing (the artifacts resize inside)"
    return (f"every image resized to {feed_size[0]}x{feed_size[1]} first (OpenCV INTER_LINEAR on RGB uint8, "
            "as the zoo's runner feeds), boxes mapped back to the original image")


def _build_report(cfg, manifest, mode, images_dir, records, collected, accuracy, latency, latency_keys, models,
                  seconds, t_start, data_notes=()) -> VerifyReport:
    ids = sorted(collected.sizes)
    evaluated_files = {r.path.name for r in records if r.image_id in collected.sizes}
    src_lat = latency.get("source")
    machine = machine_info()
    cls = machine["cpu_class"]
    out_models = {}
    for m in models:
        a = accuracy[m.name]
        lat = latency.get(m.name)
        out_models[m.name] = ModelReport(
            m.framework, m.precision, m.file, m.sha256, m.size,
            coco=CocoSummary.from_json(a.coco.to_json()),
            fidelity=CocoSummary.from_json(a.fidelity.to_json()) if a.fidelity is not None else None,
            agreement=a.agreement, drop=a.drop, drop_ci=a.drop_ci,
            latency=ModelLatency(**lat.to_json(), cpu_class=cls) if lat else None,
            speedup=round(src_lat.p50_ms / lat.p50_ms, 4) if lat and src_lat and lat.p50_ms > 0 else None,
            inferences=collected.inferences[m.name], cache_hits=collected.cache_hits[m.name],
            warnings=a.warnings + _tuning_warning(manifest, m.name, evaluated_files)
            + _speed_warning(m, lat, latency.get("fp32"), cls))
    return VerifyReport(
        name=manifest.name, created=now(), mode=mode, reference_threshold=cfg.reference_threshold,
        data=DataInfo(str(images_dir), str(cfg.annotations) if cfg.annotations else None, cfg.limit,
                      feeding(cfg.feed_size), list(cfg.feed_size) if cfg.feed_size else None, len(records),
                      len(ids), ids, collected.skipped),
        gate=Gate.judge("AP" if mode == "ground_truth" else "fidelity AP", cfg.max_drop, out_models),
        models=out_models,
        bootstrap=({"resamples": cfg.bootstrap, "seed": cfg.seed, "confidence": 0.95, "paired_over": "images"}
                   if cfg.bootstrap else None),
        latency=(LatencySetup(cfg.latency_runs, next(iter(latency.values())).warmup, latency_keys, cfg.threads,
                              batch=cfg.batch, cpu_class=cls) if latency else None),
        notes=list(data_notes) + _class_notes(manifest, cls) + _source_note(cfg.folder, manifest)
        + _feeding_notes(manifest, [m.name for m in models], cfg.feed_size),
        threads=cfg.threads, allow_unsafe_ops=cfg.allow_unsafe_ops,
        manifest={"sha256_as_read": sha256_file(cfg.folder / MANIFEST), "source": manifest.source,
                  "variants": {n: {"file": v.file, "sha256": v.sha256, "precision": v.precision, "size": v.size}
                               for n, v in manifest.variants.items()}},
        machine=machine, tool_versions=tool_versions(),
        seconds={**{k: round(v, 3) for k, v in seconds.items()}, "total": round(time.perf_counter() - t_start, 3)})


def _record_in_manifest(folder: Path, report: VerifyReport) -> None:
    """Re-load the manifest (another stage may have added to it) and record a summary under results."""
    m = Manifest.load(folder)
    m.results["verify"] = {
        "created": report.created, "report": REPORT_JSON, "mode": report.mode,
        "images": report.data.evaluated, "threads": report.threads, "gate": report.gate.to_json(),
        "cpu_class": report.cpu_class, "allow_unsafe_ops": report.allow_unsafe_ops,
        "models": {n: {"sha256": e.sha256, "AP": e.stats["AP"], "AP50": e.stats["AP50"],
                       "drop_points": None if e.drop_points is None else round(e.drop_points, 4),
                       "drop_ci_points": None if not e.drop_ci else [round(x, 4) for x in e.drop_ci_points],
                       "p50_ms": e.latency.p50_ms if e.latency else None, "speedup": e.speedup}
                   for n, e in report.models.items()},
    }
    m.save(folder)
