"""An EfficientDet-D0 built and exported by the real TF2 Object Detection API (EfficientNet-B0 +
BiFPN in the shape of ssd_efficientdet_d0_512x512_coco17_tpu-8, 256x256, 4 classes, 20 detections;
tests/fixtures/tf2zoo_cfg_efficientdet.py) converts to an artifact that keeps the zoo contract, and
its detections match the SavedModel's.

256x256 is the smallest input the OD API allows here: the feature extractor refuses images under
129 pixels, and BiFPN's levels 3-7 need a multiple of 128. EfficientDet differs from the other
families in what the converter meets: BiFPN's nearest-neighbour x2 upsampling (the OD API's
``ops.nearest_neighbor_upsampling``, a reshape/broadcast, not tf.image.resize), its fast
normalized fusion (ReLU'd scalar weights), swish everywhere, separable convolutions in the box
predictor, and a keep-aspect-ratio resizer padded to a square.

Skipped where the OD API is not installed (scripts/install --test installs it). The export is
built once in a subprocess (about 3-6 minutes on 2 shared cores, most of it the exporter's tracing)
and cached in pytest's cache folder; converting with the parity check takes about 2-5 minutes.

Measured parity (40 eval frames, 300 detections >= 0.3): TF against onnxruntime at its basic or
extended level differs by at most 7.2e-6 in score, within this network's own one-ulp noise (TF
against TF with every weight moved by one ulp: 6.7e-6 to 1.1e-5); onnxruntime's level-all layout
optimizations add the rest, 7.4e-5 against its own extended level, hence 7.8e-5 against TF. Boxes
agree to 5.3e-8. No conversion error in BiFPN's upsampling, fusion or swish.
"""

from __future__ import annotations

import numpy as np

from tests.fixtures import tf2zoo

pytestmark = tf2zoo.MARKS

NAME = "efficientdet_d0_256x256_4cls"
TF2_OUTPUTS = {"detection_anchor_indices", "detection_boxes", "detection_classes", "detection_multiclass_scores",
               "detection_scores", "num_detections", "raw_detection_boxes", "raw_detection_scores"}


_export, _entry = tf2zoo.module_fixtures(NAME, "effdet_export", "effdet_entry")


def test_export_is_laid_out_and_signed_as_the_zoo_ships(effdet_export):
    tf2zoo.assert_zoo_export(effdet_export, TF2_OUTPUTS)
    config = (effdet_export / "pipeline.config").read_text()
    assert "ssd_efficientnet-b0_bifpn_keras" in config and "keep_aspect_ratio_resizer" in config
    assert "weight_shared_convolutional_box_predictor" in config and "multiscale_anchor_generator" in config
    # A trained detector's look on the calibration frames: a few confident anchors, most low.
    calib = tf2zoo.build_info(effdet_export)["score_calibration"]
    assert 0 < np.mean(calib["scores_above_0.5_per_image"]) < 20


def test_converts_keeping_the_contract(effdet_entry):
    tf2zoo.assert_keeps_contract(effdet_entry[0], NAME)  # the graph resizes (aspect kept) and pads itself


def test_artifact_detects_like_the_saved_model(effdet_entry):
    """Every source detection >= 0.3 has its artifact counterpart (same class, IoU >= 0.5) and vice
    versa, class ids are the config's 1..4, and boxes agree to 1e-4 of the image size."""
    from detzoo.manifest import Manifest

    out, _ = effdet_entry
    p = Manifest.load(out).variants["fp32"].checks["parity"]
    assert p["images"] == 40 and p["reference"] >= 100, p  # a few detections per frame
    assert p["matched"] == p["reference"] and p["unmatched_reference"] == p["unmatched_candidate"] == 0, p
    assert p["max_box_diff"] < 1e-4, p  # measured 5.3e-8

    from detzoo.images import decode_image, demo_dir, list_images
    from detzoo.runners import OrtRunner

    m = Manifest.load(out)
    with OrtRunner(out / m.variants["fp32"].file, m.io) as r:
        dets = [r.detect(decode_image(f)) for f in list_images(demo_dir("eval"))[:4]]
    classes = np.concatenate([d.classes for d in dets])
    assert len(classes) and set(classes.tolist()) <= {1, 2, 3, 4}


def test_parity_passes_at_the_default_tolerance(effdet_entry):
    out, failed = effdet_entry
    assert failed is None, failed  # measured: max score diff 7.8e-5, box 5.3e-8, 300/300 matched
