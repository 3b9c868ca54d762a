"""Full-size tier: the real TF Object Detection API's zoo architectures at their public sizes.

The fast fixtures (tests/convert/test_tf2zoo*.py, test_tf1zoo.py; run in CI) shrink each zoo model
to 128-256 pixels and 4 classes. These are the same config templates at the public zoo values
(tests/fixtures/tf2zoo_fullsize.py, which lists where they differ from the published
pipeline.config): 90 classes, 100 detections, and

    ssd_mobilenet_v2_320x320 (resizes to 300, as published), ssd_mobilenet_v2_fpnlite_320x320,
    efficientdet_d0_512x512, centernet_resnet50_v1_fpn_512x512, faster_rcnn_resnet50_v1_640x640
    (300 proposals), and the TF1 frozen graphs ssdlite_mobilenet_v2_coco (300x300) and
    faster_rcnn_resnet50_coco (keep-aspect 600..1024, 300 proposals).

Each is built and exported by the OD API (seeded, calibrated weights; a subprocess, cached in
pytest's cache folder under ``detzoo-tf2zoo-fullsize/``), converted with defaults, and must pass
the default parity check and keep the zoo contract. The measured figures (build and convert
seconds, parity matched / max score and box diff / tolerance, node count) are kept in pytest's
cache under ``detzoo/tf2zoo-fullsize/<name>`` (``pytest --cache-show 'detzoo/tf2zoo-fullsize/*'``),
written before the assertions so a failing run still leaves them.

Not in CI: marked ``fullsize`` and skipped unless asked for (tests/conftest.py)::

    .venv/bin/python -m pytest --fullsize tests/test_tf2zoo_fullsize.py
    DETZOO_FULLSIZE=1 .venv/bin/python -m pytest tests/test_tf2zoo_fullsize.py -k ssd_mobilenet_v2_320

Rough costs on 2 AVX2 cores: the SSDs a few minutes to a quarter of an hour each (build, then the
parity check's 40 frames through TF and onnxruntime plus its noise runs); EfficientDet-D0, CenterNet
and the TF2 Faster R-CNN tens of minutes; the TF1 Faster R-CNN at 800x600 the longest (up to hours).
A cached build is reused by later sessions (keyed like the fast ones: config text, builder, seed,
images, versions).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import tf2zoo
from tests.fixtures.tf2zoo_fullsize import CLASSES, FULLSIZE, register

pytestmark = [pytest.mark.fullsize,
              pytest.mark.skipif(tf2zoo.od_api_missing() is not None,
                                 reason=f"TF2 Object Detection API: {tf2zoo.od_api_missing()}")]

BUILD_TIMEOUT = 6 * 3600  # seconds, per build subprocess (tf2zoo.export's default 900 is sized for CI)
CACHE_DIR = "detzoo-tf2zoo-fullsize"  # beside the fast builds' detzoo-tf2zoo, so one can go alone
RECORD_KEY = "detzoo/tf2zoo-fullsize/{}"


def _export(name: str, request, tmp_path_factory) -> tuple[Path, float]:
    """(export folder, seconds this session spent on it): ``tf2zoo.cached_export`` with a full-size
    build timeout, into a cache folder of its own."""
    register()
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir(CACHE_DIR)) if cache is not None else tmp_path_factory.mktemp("tf2zoo-fullsize")
    t0 = time.perf_counter()
    folder = tf2zoo.export(name, root, timeout=BUILD_TIMEOUT)
    return folder, time.perf_counter() - t0


def _node_counts(model) -> tuple[int, int]:
    """(top-level nodes, nodes including those of Loop/If/Scan bodies)."""
    def walk(graph) -> int:
        n = 0
        for node in graph.node:
            n += 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    n += walk(attr.g)
                for g in attr.graphs:
                    n += walk(g)
        return n

    return len(model.graph.node), walk(model.graph)


def _record(cache, name: str, row: dict) -> None:
    if cache is not None:
        cache.set(RECORD_KEY.format(name), row)


def _assert_tf1_contract(entry: Path, name: str, model) -> None:
    """As tests/convert/test_tf1zoo.py: the frozen graph's IO, a uint8 ``image_tensor:0`` and the four
    outputs in order."""
    import onnx

    from detzoo.manifest import Manifest
    from detzoo.source import OUTPUT_ROLES

    m = Manifest.load(entry)
    assert m.name == name and m.source["format"] == "frozen_graph"
    assert [i.name for i in model.graph.input] == ["image_tensor:0"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == [f"{r}:0" for r in OUTPUT_ROLES]
    assert m.io.resize is None and m.io.num_classes == CLASSES


@pytest.mark.parametrize("name", list(FULLSIZE))
def test_fullsize_converts_with_parity_and_contract(name, request, tmp_path_factory):
    import onnx

    from detzoo.cpu import cpu_class
    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.manifest import Manifest
    from detzoo.runners import OrtRunner

    source_format = FULLSIZE[name][3]
    export, build_wall = _export(name, request, tmp_path_factory)
    info = tf2zoo.build_info(export)

    t0 = time.perf_counter()
    entry, failed = tf2zoo.convert_with_defaults(export, tmp_path_factory.mktemp(name) / "entry")
    convert_wall = time.perf_counter() - t0

    m = Manifest.load(entry)
    fp32 = m.variants["fp32"]
    p = fp32.checks["parity"]
    model = onnx.load(entry / fp32.file)
    nodes, nodes_all = _node_counts(model)
    row = {"cpu": cpu_class(), "source_format": source_format, "num_classes": info.get("num_classes"),
           "weights": info.get("weights"),
           "build_seconds": info.get("seconds", {}).get("total"),  # the builder's own, when it was built
           "build_wall_seconds_this_session": round(build_wall, 1),  # ~0 when the cache had it
           "conversion_seconds": fp32.settings["conversion_seconds"],  # to the saved ONNX, before parity
           "convert_wall_seconds": round(convert_wall, 1),  # convert() in all, parity check included
           "parity": {k: p.get(k) for k in ("images", "reference", "matched", "unmatched_reference",
                                            "unmatched_candidate", "max_score_diff", "max_box_diff")},
           "tolerance": p.get("tolerance"), "passed": failed is None, "failure": failed,
           "nodes": nodes, "nodes_with_subgraphs": nodes_all, "onnx_bytes": fp32.size}
    _record(request.config.cache, name, row)
    print(f"\n{name}: {row}")

    assert failed is None, failed
    assert p["reference"] > 0, f"no source detection >= the parity threshold: a dead fixture ({p})"
    if source_format == "saved_model":
        tf2zoo.assert_keeps_contract(entry, name)
    else:
        _assert_tf1_contract(entry, name, model)
    with OrtRunner(entry / fp32.file, m.io) as r:
        dets = [r.detect(decode_image(f)) for f in list_images(demo_dir("eval"))[:2]]
    classes = np.concatenate([d.classes for d in dets])
    assert len(classes) and set(classes.tolist()) <= set(range(1, CLASSES + 1)), sorted(set(classes.tolist()))
