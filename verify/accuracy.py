"""The accuracy pass: detections of every model on the same images, then COCO evaluation.

Running models (``collect_detections``) is kept apart from evaluating them (``evaluate_models``):
detections go through the per-model cache, so an interrupted pass resumes, a re-run evaluates
without inference, and a later sharded run can merge caches before one evaluation.

Owns: the accuracy pass (running models over images, with the cache) and per-model COCO results,
drops and agreement. Does not touch: files other than the cache, the report's shape, the gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from detzoo.coco import CocoResult, bootstrap_drop, evaluate, reference_ground_truth
from detzoo.detections import Agreement, Detections, agreement
from detzoo.errors import DetzooError
from detzoo.images import ImageError, ImageRecord, decode_image
from detzoo.runners import Runner, preprocess

from detzoo.verify.cache import DetectionCache, image_sha256


@dataclass
class Model:
    """A model to verify: the source (``name='source'``) or a manifest variant."""

    name: str
    framework: str
    precision: str
    file: str
    sha256: str
    size: int
    runner: Runner
    cache: DetectionCache | None = None


@dataclass
class Collected:
    detections: dict            # model name -> {image id: Detections}
    sizes: dict                 # image id -> (h, w)
    keys: dict                  # image id -> file name
    skipped: list               # [{"file", "image_id", "error"}]
    inferences: dict            # model name -> images actually run (the rest came from the cache)
    cache_hits: dict
    inference_seconds: dict = field(default_factory=dict)  # model name -> summed model-call time


PREFETCH = 2  # images read, hashed, decoded and preprocessed ahead of the models (memory stays flat)


@dataclass
class _Prepared:
    """One image made ready off the main thread: its hash, cache hits, pixels and model batches."""

    record: ImageRecord
    sha: str | None = None
    cached: dict = field(default_factory=dict)   # model name -> CachedImage or None
    image: object = None                         # RGB uint8 array, when some model must run
    batches: dict = field(default_factory=dict)  # id(IOSpec) -> preprocessed batch
    error: str | None = None
    hw: tuple = ()                               # the decoded image's (h, w): boxes map back to it


def _prepare(models: list[Model], rec: ImageRecord, feed_size=None) -> _Prepared:
    try:
        sha = image_sha256(rec.path)
    except OSError as e:
        return _Prepared(rec, error=f"cannot read: {e.strerror or e}")
    p = _Prepared(rec, sha, {m.name: m.cache.get(rec.image_id, sha) if m.cache else None for m in models})
    if all(c is not None for c in p.cached.values()):
        return p
    try:
        p.image = decode_image(rec.path)
    except ImageError as e:  # never cached: merging shards skips it again, as each shard did
        p.error = str(e)
        return p
    p.hw = p.image.shape[:2]
    from detzoo.verify.core import fed_image

    p.image = fed_image(p.image, feed_size)  # the zoo's feeding: every model starts from the same pixels
    for m in models:  # models sharing an IO spec share one batch
        if p.cached[m.name] is None and id(m.runner.io) not in p.batches:
            p.batches[id(m.runner.io)] = preprocess(p.image, m.runner.io)
    return p


def _prefetched(models: list[Model], records: list[ImageRecord], feed_size=None):
    """``_prepare`` each record in a background thread, ``PREFETCH`` ahead, yielded in order.

    Reading, hashing and decoding (PIL and hashlib release the GIL) overlap the models' inference
    of the previous image instead of adding to it.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if PREFETCH < 1:
        yield from (_prepare(models, rec, feed_size) for rec in records)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="detzoo-prefetch") as pool:
        pending = deque()
        it = iter(records)
        try:
            for rec in it:
                pending.append(pool.submit(_prepare, models, rec, feed_size))
                if len(pending) > PREFETCH:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def collect_detections(models: list[Model], records: list[ImageRecord],
                       advance: Callable[[], None] | None = None, cache_only: bool = False,
                       feed_size=None) -> Collected:
    """Each image is decoded once (ahead, in a background thread), preprocessed once per IO spec,
    and fed to every model that has no cached result for it. ``cache_only`` (merging shards): a
    missing result is an error, not a run."""
    dets = {m.name: {} for m in models}
    sizes, keys, skipped = {}, {}, []
    runs = {m.name: 0 for m in models}
    hits = {m.name: 0 for m in models}
    infer_s = {m.name: 0.0 for m in models}
    for p in _prefetched(models, records, feed_size):
        rec = p.record
        if p.error is not None:
            skipped.append({"file": rec.key, "image_id": rec.image_id, "error": p.error})
            if advance:
                advance()
            continue
        missing = [n for n, c in p.cached.items() if c is None]
        if cache_only and missing:
            raise DetzooError(f"no detections of {missing[0]} for image {rec.key} (id {rec.image_id}) in the "
                              "cache; every shard must have run on the same images and models")
        for m in models:
            c = p.cached[m.name]
            if c is not None:
                dets[m.name][rec.image_id] = c.detections
                sizes[rec.image_id] = c.hw
                hits[m.name] += 1
                continue
            d = m.runner.detect(p.image, p.batches[id(m.runner.io)], image_hw=p.hw)
            runs[m.name] += 1
            infer_s[m.name] += m.runner.last_inference_time
            if m.cache:
                m.cache.put(rec.image_id, p.sha, p.hw, d)
            dets[m.name][rec.image_id] = d
            sizes[rec.image_id] = tuple(p.hw)
        keys[rec.image_id] = rec.key
        if advance:
            advance()
    if not sizes:
        raise DetzooError(f"none of the {len(records)} images could be decoded "
                          f"(first: {skipped[0]['file']}: {skipped[0]['error']})" if skipped
                          else "no images to verify")
    return Collected(dets, sizes, keys, skipped, runs, hits, infer_s)


@dataclass
class ModelAccuracy:
    coco: CocoResult
    fidelity: CocoResult | None = None        # against the source's confident detections
    agreement: Agreement | None = None
    drop: dict = field(default_factory=dict)  # stat name -> source - model (fractions, not points)
    drop_ci: dict | None = None
    warnings: list = field(default_factory=list)


def _results(dets: dict[int, Detections], ids) -> list[dict]:
    out = []
    for i in ids:
        out.extend(dets[i].to_coco(i))
    return out


def _category_warnings(name: str, gt: dict, dets: dict[int, Detections], ids) -> list[str]:
    idset = set(ids)
    annotated = {a["category_id"] for a in gt["annotations"] if a["image_id"] in idset}
    defined = {c["id"] for c in gt["categories"]}
    emitted = {int(c) for i in ids for c in dets[i].classes.tolist()}
    out = []
    never = sorted(annotated - emitted)
    if never:
        out.append(f"{name} never emits categories {never[:10]}{' ...' if len(never) > 10 else ''} that the "
                   "annotations hold on these images: their AP is 0 (wrong label map or class offset?)")
    unknown = sorted(emitted - defined)
    if unknown:
        out.append(f"{name} emits category ids {unknown[:10]}{' ...' if len(unknown) > 10 else ''} the annotations "
                   "do not define: COCO evaluation ignores those detections (wrong label map or class offset?)")
    return out


def evaluate_models(collected: Collected, gt: dict | None, threshold: float, bootstrap: int = 0,
                    seed: int = 0, label_map: dict | None = None) -> tuple[dict, dict]:
    """COCO results per model, drops against the source, agreement and fidelity.

    Ground-truth mode (``gt`` given): each model's detections against the annotations. Reference
    mode: against the source's detections scoring >= ``threshold``, with every class any model
    emits as a category so all share one ground truth (needed for the paired bootstrap).
    Returns ({model name: ModelAccuracy}, the reference ground truth or {}).
    """
    ids = sorted(collected.sizes)
    src = collected.detections["source"]
    all_cats = sorted({int(c) for dets in collected.detections.values() for i in ids
                       for c in dets[i].classes.tolist()})
    ref_gt = reference_ground_truth({i: collected.sizes[i] for i in ids}, src, threshold, all_cats, label_map)
    if gt is None and not ref_gt["annotations"]:
        raise DetzooError(f"the source detects nothing scoring >= {threshold} on the {len(ids)} images, so "
                          "reference mode has nothing to compare against; give --annotations, other --images "
                          "or a lower --reference-threshold")
    target = gt if gt is not None else ref_gt
    out = {}
    for name, dets in collected.detections.items():
        res = evaluate(target, _results(dets, ids), ids, keep_per_image=bool(bootstrap))  # C++ unless bootstrapping
        acc = ModelAccuracy(res)
        if gt is not None:
            acc.warnings = _category_warnings(name, gt, dets, ids)
            acc.fidelity = evaluate(ref_gt, _results(dets, ids), ids, keep_per_image=False)
        else:
            acc.fidelity = res
        if name != "source":
            acc.agreement = agreement(((collected.keys[i], collected.sizes[i], src[i], dets[i]) for i in ids),
                                      min_score=threshold, iou=0.5)
        out[name] = acc
    base = out["source"].coco
    for name, acc in out.items():
        acc.drop = {k: base.stats_dict[k] - v for k, v in acc.coco.stats_dict.items()
                    if base.stats_dict[k] >= 0 and v >= 0}
        if bootstrap and name != "source":
            acc.drop_ci = bootstrap_drop(base, acc.coco, bootstrap, seed)
    return out, ref_gt
