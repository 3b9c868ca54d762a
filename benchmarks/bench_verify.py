"""Verify's own overhead, and its memory on 5,000 images.

Overhead: wall time of verify's accuracy pass (``report.json`` seconds.accuracy_pass: reading,
hashing and decoding each image, every model's inference, detections converted and appended to
the cache) divided by the sum of the pure inference time of the same models on the same images,
measured in a bare loop over pre-decoded images with fresh runners (so model warm-up counts on
both sides). 1.0 is the floor; repeats alternate which side runs first; the ratio is the median.

Memory: peak RSS of a whole ``verify`` of 5,000 synthetic images (tiny detector) in its own
process, sampled during the run, to show the pass streams: memory grows with the detections
kept for evaluation, not with the images decoded.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.util import child_env, median, python, run_measured, spread


def _bare_inference(folder: Path, variants: list, records, threads: int) -> tuple[float, float]:
    """(summed ``Runner.infer`` seconds, process CPU seconds) over every model and image, the
    images decoded and preprocessed beforehand, fresh runners loaded before timing."""
    from detzoo.images import decode_image
    from detzoo.manifest import Manifest
    from detzoo.runners import OrtRunner, preprocess, source_runner
    from detzoo.source import open_source

    m = Manifest.load(folder)
    batches = [preprocess(decode_image(r.path), m.io) for r in records]
    total = 0.0
    with open_source(m.source["path"]) as src:
        runners = [source_runner(src.format, src.path, m.io, threads)]
        runners += [OrtRunner(m.artifact_path(folder, v), m.io, threads, label=v) for v in variants]
        try:
            for r in runners:
                r.activate()
            c0 = time.process_time()
            for b in batches:  # the order verify uses: each image through every model
                for r in runners:
                    r.infer(b)
                    total += r.last_inference_time
            cpu = time.process_time() - c0
        finally:
            for r in runners:
                r.deactivate()
    return total, cpu


def _accuracy_pass(folder: Path, variants: list, records, threads: int) -> tuple[float, float, float]:
    """(wall, process CPU, in-pass inference) seconds of verify's accuracy pass, as ``verify`` runs
    it (``open_models`` then ``collect_detections``, detection cache on), from an empty cache."""
    import contextlib

    from detzoo.source import open_source
    from detzoo.verify.accuracy import collect_detections
    from detzoo.verify.cache import CACHE_DIR
    from detzoo.verify.core import VerifyConfig, open_models, plan

    shutil.rmtree(folder / CACHE_DIR, ignore_errors=True)  # every image really runs
    p = plan(VerifyConfig(folder=folder, threads=threads, variants=variants))
    with open_source(p.manifest.source["path"], expected_sha256=p.manifest.source.get("sha256")) as src, \
            contextlib.ExitStack() as stack:
        models = open_models(p, src, stack)
        t0, c0 = time.perf_counter(), time.process_time()
        collected = collect_detections(models, records)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(folder / CACHE_DIR, ignore_errors=True)
    return wall, cpu, sum(collected.inference_seconds.values())


def demo_copies(dest: Path, copies: int) -> Path:
    """The 40 demo evaluation frames (768x576 JPEG), ``copies`` times under distinct names: a longer
    pass on real images, so the first image's warm-up weighs little."""
    from detzoo.images import demo_dir

    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(demo_dir("eval").glob("*.jpg")):
        for c in range(copies):
            shutil.copyfile(p, dest / f"{p.stem}_{c}.jpg")
    return dest


def overhead(entry: Path, images: Path, variants: list, threads_list=(1, 2), repeats: int = 5) -> dict:
    """Per thread count: median of (accuracy pass / pure inference), wall and CPU, over interleaved repeats."""
    from detzoo.images import folder_records

    records = folder_records(images)
    rows = {}
    for threads in threads_list:
        passes, bares = [], []
        for r in range(repeats):
            for side in (("pass", "bare") if r % 2 == 0 else ("bare", "pass")):
                if side == "pass":
                    passes.append(_accuracy_pass(entry, variants, records, threads))
                else:
                    bares.append(_bare_inference(entry, variants, records, threads))
        wall = [p[0] / b[0] for p, b in zip(passes, bares)]
        cpu = [p[1] / b[1] for p, b in zip(passes, bares)]
        rows[threads] = {"repeats": repeats, "pass_s": median([p[0] for p in passes]),
                         "inference_s": median([b[0] for b in bares]), "ratio": median(wall),
                         "ratio_spread": spread(wall), "cpu_ratio": median(cpu), "cpu_spread": spread(cpu),
                         "in_pass_inference_s": median([p[2] for p in passes])}
    return {"models": ["source", *variants], "images": len(records), "rows": rows}


def components(images: Path, repeats: int = 3) -> dict:
    """Milliseconds per image of verify's own work in the pass: hashing, decoding, and turning one
    model's raw outputs into Detections plus one cache append (100 detections, as SSD models emit)."""
    import numpy as np

    from detzoo.detections import Detections
    from detzoo.images import decode_image, folder_records
    from detzoo.verify.cache import DetectionCache, image_sha256

    records = folder_records(images)
    rng = np.random.default_rng(0)
    raw = (np.array([100.0]), rng.uniform(0, 1, (1, 100, 4)).astype(np.float32),
           rng.uniform(0, 1, (1, 100)).astype(np.float32), np.ones((1, 100), np.float32))
    out = {"sha256": [], "decode": [], "detections_and_cache": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = DetectionCache(tmp, "0" * 64, {})
        for _ in range(repeats):
            t0 = time.perf_counter()
            for r in records:
                image_sha256(r.path)
            t1 = time.perf_counter()
            for r in records:
                decode_image(r.path)
            t2 = time.perf_counter()
            for r in records:
                cache.put(r.image_id, "x", (576, 768), Detections.from_od_api(*raw, image_hw=(576, 768)))
            t3 = time.perf_counter()
            for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2)):
                out[k].append(v / len(records) * 1e3)
    return {k: median(v) for k, v in out.items()}


# --- memory ------------------------------------------------------------------------------------

MEMORY_CHILD = """
import json, sys, threading, time
from pathlib import Path
from detzoo.verify import VerifyConfig, verify
entry, images, out = (Path(a) for a in sys.argv[1:4])
samples, stop = [], threading.Event()
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def sample():
    while not stop.is_set():
        samples.append((time.perf_counter(), rss_mb()))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
rep = verify(VerifyConfig(folder=entry, images=images, latency_runs=0, max_drop=float("inf"))).report.to_json()
stop.set()
out.write_text(json.dumps({"t0": t0, "samples": samples, "seconds": rep["seconds"],
                           "images": rep["data"]["evaluated"],
                           "detections": sum(m["coco"]["num_detections"] for m in rep["models"].values())}))
"""

HW = (240, 320)  # synthetic image size: 225 KiB decoded, about 1.1 GiB for 5,000 if a pass kept them


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` 320x240 JPEGs: smooth gradients with a few rectangles (compress like photos, decode fast)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = HW
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        a = rng.uniform(0.2, 1.0, 3)
        img = (np.stack([xx / w * a[0], yy / h * a[1], (xx + yy) / (h + w) * a[2]], -1) * 200).astype(np.uint8)
        for _ in range(3):
            y0, x0 = rng.integers(0, h - 40), rng.integers(0, w - 40)
            img[y0:y0 + rng.integers(10, 40), x0:x0 + rng.integers(10, 40)] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(folder / f"img_{i:05d}.jpg", quality=90)
    return folder


def make_constant_cost_detector(out_dir: Path) -> Path:
    """A SavedModel with the zoo signature that returns 100 detections computed from the image's
    mean colour in microseconds: inference stays negligible, so the pass's own memory shows."""
    import tensorflow as tf

    class Detector(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
        def __call__(self, input_tensor):
            m = tf.reduce_mean(tf.cast(input_tensor, tf.float32), axis=[1, 2])[0] / 255.0
            k = tf.range(100, dtype=tf.float32) / 100.0
            y0 = tf.math.floormod(k * 0.37 + m[0], 0.8)
            x0 = tf.math.floormod(k * 0.53 + m[1], 0.8)
            boxes = tf.stack([y0, x0, y0 + 0.15, x0 + 0.15], axis=1)[None]
            scores = tf.math.floormod(k * 0.71 + m[2], 1.0)[None]
            classes = tf.math.floormod(tf.range(100, dtype=tf.float32), 3.0)[None] + 1.0
            return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
                    "num_detections": tf.constant([100.0])}

    module = Detector()
    path = out_dir / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__.get_concrete_function()})
    return path


def memory(n_images: int = 5000, workdir: Path | None = None) -> dict:
    """Peak RSS of one verify (reference mode, source + fp32) of ``n_images`` synthetic 320x240
    JPEGs with 100 detections each, and the RSS through its accuracy pass, in a fresh process."""
    from detzoo.convert import ConvertConfig, convert

    with tempfile.TemporaryDirectory(prefix="detzoo-bench-mem-", dir=workdir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        images = make_images(tmp / "images", n_images)
        entry = tmp / "entry"
        convert(ConvertConfig(source=make_constant_cost_detector(tmp / "model"), out=entry, check_images=images,
                              check_limit=20))
        setup_s = time.perf_counter() - t0
        res = run_measured([python(), "-c", MEMORY_CHILD, str(entry), str(images), str(tmp / "mem.json")],
                           child_env(1))
        if res["rc"] != 0:
            raise RuntimeError(f"verify of {n_images} images failed: {res['output'][-2000:]}")
        d = json.loads((tmp / "mem.json").read_text())
    # RSS through the accuracy pass, at each tenth of it (images stream at a steady rate)
    t_pass0 = d["t0"] + d["seconds"]["load"]
    span = d["seconds"]["accuracy_pass"]
    curve = [round(min(d["samples"], key=lambda s: abs(s[0] - (t_pass0 + span * k / 10)))[1], 1) for k in range(11)]
    return {"images": d["images"], "detections": d["detections"], "peak_rss_mb": res["peak_rss_mb"],
            "pass_rss_mb": curve, "seconds": d["seconds"], "setup_s": setup_s,
            "decoded_images_mb": n_images * HW[0] * HW[1] * 3 / 2**20}


if __name__ == "__main__":
    print(json.dumps(memory(int(sys.argv[1]) if len(sys.argv) > 1 else 1000), indent=2))
