"""An SSD MobileNet v2 FPNLite built and exported by the real TF2 Object Detection API (in the shape of
ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8: levels 3-7, a weight-shared separable box predictor,
multiscale anchors; 128x128, 4 classes; tests/fixtures/tf2zoo_cfg_fpnlite.py) converts to an artifact
that keeps the zoo contract, and its detections match the SavedModel's.

Skipped where the OD API is not installed (scripts/install --test installs it). The export is built
once in a subprocess and cached in pytest's cache folder.
"""

from __future__ import annotations

import numpy as np

from tests.fixtures import tf2zoo

pytestmark = tf2zoo.MARKS

NAME = "ssd_mobilenet_v2_fpnlite_128x128_4cls"
TF2_OUTPUTS = {"detection_anchor_indices", "detection_boxes", "detection_classes", "detection_multiclass_scores",
               "detection_scores", "num_detections", "raw_detection_boxes", "raw_detection_scores"}


_export, _entry = tf2zoo.module_fixtures(NAME, "fpnlite_export", "fpnlite_entry")


def test_export_is_laid_out_and_signed_as_the_zoo_ships(fpnlite_export):
    tf2zoo.assert_zoo_export(fpnlite_export, TF2_OUTPUTS)
    config = (fpnlite_export / "pipeline.config").read_text()
    assert "ssd_mobilenet_v2_fpn_keras" in config and "weight_shared_convolutional_box_predictor" in config
    calib = tf2zoo.build_info(fpnlite_export)["score_calibration"]
    assert calib["anchors_x_classes"] == 4 * 6 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)  # levels 3-7, 6 anchors each
    assert 0 < np.mean(calib["scores_above_0.5_per_image"]) < 20


def test_converts_keeping_the_contract(fpnlite_entry):
    tf2zoo.assert_keeps_contract(fpnlite_entry[0], NAME)


def test_parity_passes_at_the_default_tolerance(fpnlite_entry):
    """Measured (AVX2, 40 frames): 517/517 matched, score 1.6e-4 against a calibrated 5.2e-4 (noise
    1.2-1.3e-4), boxes 1.6e-7."""
    from detzoo.manifest import Manifest

    out, failed = fpnlite_entry
    assert failed is None, failed
    p = Manifest.load(out).variants["fp32"].checks["parity"]
    assert p["images"] == 40 and p["reference"] >= 100, p
    assert p["matched"] == p["reference"] and p["unmatched_reference"] == p["unmatched_candidate"] == 0, p
    assert p["max_box_diff"] < 1e-4, p
