"""``detzoo verify DIR --ray``: the shards of a verification as Ray tasks, one per (model, shard).

Ray schedules the tasks over a cluster (a local one by default) and moves their results; detzoo
adds no scheduler of its own. Each task loads one model, checks its sha256 against the manifest,
runs it on one shard's images (``Shard.select``, as ``--shard K/N`` does) and returns their
detections. The driver is the only writer: it appends the results to the entry's detection cache
as tasks finish (an interrupted run resumes: cached images are not sent again), then runs the
ordinary verify with every detection read from the cache, so the report equals an unsharded one.

On a real cluster every node needs detzoo installed and the entry folder and the images at the
same path (a shared filesystem); pass ``address`` ("auto" on a cluster node, "ray://head:10001"
through Ray Client, or set RAY_ADDRESS). Latency, if asked for, is measured on the driver.

Owns: the Ray executor and its task. Does not touch: evaluation or the report (the pipeline's);
the cache's format (verify/cache.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from detzoo.errors import DetzooError, InternalError, first_line
from detzoo.verify.shard import Shard


@dataclass(frozen=True)
class RayOptions:
    """``address``: None starts a local cluster (``num_cpus``: default all cores, localhost only);
    ``shards``: shards per model (default: the cluster's CPUs divided by the threads per task)."""

    address: str | None = None
    shards: int | None = None
    num_cpus: int | None = None

    def __post_init__(self):
        if self.shards is not None and (not isinstance(self.shards, int) or self.shards < 1):
            raise DetzooError(f"--shards must be an integer >= 1, got {self.shards!r}")
        if self.num_cpus is not None and (not isinstance(self.num_cpus, int) or self.num_cpus < 1):
            raise DetzooError(f"num_cpus must be an integer >= 1, got {self.num_cpus!r}")


def detect_shard(folder: str, model: str, threads: int, records: list, allow_unsafe_ops: bool = False,
                 feed_size=None) -> list:
    """A Ray task: ``model`` ("source" or a variant of ``folder``'s manifest) on ``records``
    [(image id, path)]; returns [(image id, image sha256, (h, w), detections JSON)].

    Images that cannot be read or decoded are left out: the driver's pass lists them as skipped.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import contextlib

    from detzoo.images import ImageError, decode_image
    from detzoo.manifest import Manifest
    from detzoo.source import open_source
    from detzoo.verify.cache import image_sha256

    from detzoo.verify.core import fed_image, open_model

    m = Manifest.load(folder)
    out = []
    with contextlib.ExitStack() as stack:
        src = None
        if model == "source":
            src = stack.enter_context(open_source(m.source["path"], expected_sha256=m.source.get("sha256")))
        path = None if model == "source" else m.checked_artifact(folder, model)
        runner = stack.enter_context(open_model(m, model, path, src, threads, allow_unsafe_ops).runner)
        for image_id, path in records:
            try:
                sha = image_sha256(path)
                image = decode_image(path)
            except (OSError, ImageError):
                continue
            hw = tuple(image.shape[:2])
            out.append((int(image_id), sha, hw, runner.detect(fed_image(image, feed_size), image_hw=hw).to_json()))
    return out


def _init(ray, opts: RayOptions) -> bool:
    """Connect or start a cluster unless this process already did; True if we must shut it down."""
    if ray.is_initialized():
        return False
    import logging

    try:
        if opts.address:
            ray.init(address=opts.address, logging_level=logging.ERROR)
        else:  # "local" ignores RAY_ADDRESS; every address is localhost
            ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = opts.address or "a local cluster"
        raise DetzooError(f"cannot start Ray on {where}: {first_line(e)}") from None
    return True


class RayExecutor:
    """The verify pipeline's Ray executor: detections missing from the cache are computed by Ray
    tasks and appended to it by the driver, then every detection is read from the cache."""

    load_models = False  # the tasks load the models; the driver only reads caches (and times latency)

    def __init__(self, opts: RayOptions | None = None):
        self.opts = opts or RayOptions()

    def __call__(self, p, models: list, progress):
        from detzoo.verify.cache import image_sha256
        from detzoo.verify.core import LocalExecutor

        image_shas = {}
        for r in p.records:
            try:
                image_shas[r.image_id] = image_sha256(r.path)
            except OSError:
                pass  # the final pass lists it as skipped
        todo = {m.name: [r for r in p.records if r.image_id not in image_shas
                         or m.cache.get(r.image_id, image_shas[r.image_id]) is None] for m in models}
        if any(todo.values()):
            self._dispatch(p, {m.name: m.cache for m in models}, todo, progress)
        return LocalExecutor()(p, models, progress)  # cache_only: every detection is now cached

    def _dispatch(self, p, caches: dict, todo: dict, progress) -> None:
        from detzoo.detections import Detections

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
        try:
            import ray
        except ImportError:
            raise DetzooError("--ray needs Ray: pip install 'detzoo[ray]' (or 'ray>=2.9,<3')") from None

        cfg, folder = p.cfg, Path(p.folder).resolve()
        started = _init(ray, self.opts)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            n_shards = self.opts.shards or max(1, cpus // cfg.threads)
            task = ray.remote(num_cpus=cfg.threads)(detect_shard)
            jobs = {}
            for name, recs in todo.items():
                for k in range(1, min(n_shards, len(recs)) + 1):
                    part = Shard(k, min(n_shards, len(recs))).select(recs)
                    paths = [(r.image_id, str(Path(r.path).resolve())) for r in part]
                    ref = task.remote(str(folder), name, cfg.threads, paths, cfg.allow_unsafe_ops, cfg.feed_size)
                    jobs[ref] = (name, k, len(part))
            with progress.task(f"ray: {len(jobs)} tasks ({len(todo)} models)", len(jobs)) as advance:
                pending = list(jobs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    name, k, _ = jobs[done[0]]
                    try:
                        rows = ray.get(done[0])
                    except ray.exceptions.RayError as e:
                        cause = getattr(e, "cause", None) or e
                        msg = " ".join(str(cause).split())[:300]
                        if isinstance(cause, DetzooError):  # the user's input, seen by a worker
                            raise type(cause)(f"ray task {name} shard {k}: {msg}") from None
                        raise InternalError(f"ray task {name} shard {k} failed: {type(cause).__name__}: "
                                            f"{msg or first_line(cause)}") from e
                    for image_id, sha, hw, det in rows:
                        caches[name].put(image_id, sha, hw, Detections.from_json(det))
                    advance()
        finally:
            if started:
                ray.shutdown()


def verify_ray(cfg, opts: RayOptions | None = None, console=None):
    """Verify ``cfg`` with one Ray task per (model, shard); returns ``VerifyResult`` like ``verify``."""
    from detzoo.verify.core import plan, run

    if not cfg.use_cache:
        raise DetzooError("--ray collects the tasks' results in the detection cache; it cannot run with the cache off")
    cfg = replace(cfg, folder=Path(cfg.folder).resolve(), cache_only=True)
    return run(plan(cfg), console, RayExecutor(opts))
