"""Session fixtures shared by every stage's tests: the real model, its fp32 artifact, tiny models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Read by the CLI as option defaults (--images, --annotations) and by detzoo.cpu: inherited from
# the outer environment they would change what a test runs (a bad-input row would find images).
_OUTER_ENV = ("COCO_IMG_PATH", "COCO_ANNO_PATH", "DETZOO_CPU_CLASS")
for _name in _OUTER_ENV:  # session fixtures (the converted entries) are built before any test's fixture runs
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _no_outer_env(monkeypatch):
    """Every test starts without them; a test that wants one sets it (monkeypatch.setenv or env=)."""
    for name in _OUTER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def real_model_path() -> Path:
    from detzoo.defaults import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def real_fp32_dir(tmp_path_factory, real_model_path) -> Path:
    """The real pedestrian SSDLite converted once (parity-checked); copy it before changing it."""
    from detzoo.convert import ConvertConfig, convert

    out = tmp_path_factory.mktemp("real") / "entry"
    convert(ConvertConfig(source=real_model_path, out=out))
    return out


@pytest.fixture
def real_fp32_copy(real_fp32_dir, tmp_path) -> Path:
    dst = tmp_path / "entry"
    shutil.copytree(real_fp32_dir, dst)
    return dst


# --- tiny models in the shapes of real detectors (tests/fixtures) -------------------------------

@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """(images_dir, annotations_json): drawn boxes with known ground truth, category ids 1 and 3."""
    from tests.fixtures.dataset import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


def _model_fixture(maker: str, folder: str, doc: str):
    """A session fixture: ``tests.fixtures.models.<maker>`` built once into a fresh folder."""

    def fixture(tmp_path_factory):
        from tests.fixtures import models

        return getattr(models, maker)(tmp_path_factory.mktemp(folder))

    fixture.__doc__ = doc
    return pytest.fixture(scope="session")(fixture)


shapes_saved_model = _model_fixture("make_saved_model", "sm",
                                    "A TF2 zoo-signature SavedModel detecting the shapes (1-based ids 1 and 3).")
shapes_export_folder = _model_fixture("make_export_folder", "export", "Its TF1-style export folder.")
shapes_tflite = _model_fixture("make_tflite", "tflite", "The SavedModel's twin as TFLite ending in "
                               "TFLite_Detection_PostProcess (0-based ids).")
two_stage_graph = _model_fixture("make_two_stage_frozen_graph", "frcnn", "A TF1 frozen graph shaped like Faster "
                                 "R-CNN: NMS, CropAndResize, per-class NMS in a While loop.")
zoo_tarball = _model_fixture("make_zoo_tarball", "zoo", "A zoo .tar.gz holding a frozen graph.")


@pytest.fixture(scope="session")
def ssd_tflite(tmp_path_factory):
    """``ssd_tflite(precision, regular=False)``: the tiny SSD-shaped TFLite family (float, float16,
    int8, uint8 post-processing inputs), calibrated on the demo calibration frames; built once."""
    from detzoo.images import decode_image, demo_dir, list_images
    from tests.fixtures import models

    root = tmp_path_factory.mktemp("ssd_tflite")
    calib = [decode_image(p) for p in list_images(demo_dir("calib"))[:16]]
    cache = {}

    def get(precision: str, regular: bool = False, residual: bool = False) -> Path:
        if (precision, regular, residual) not in cache:
            cache[precision, regular, residual] = models.make_ssd_tflite(
                root, precision=precision, use_regular_nms=regular, residual=residual, calibration_images=calib)
        return cache[precision, regular, residual]

    return get


# --- converted tiny entries ------------------------------------------------------------------

def _convert(source: Path, out: Path, images: Path) -> Path:
    from detzoo.convert import ConvertConfig, convert

    convert(ConvertConfig(source=source, out=out, check_images=images))
    return out


@pytest.fixture(scope="session")
def shapes_entry_dir(tmp_path_factory, shapes, shapes_saved_model) -> Path:
    """The tiny TF2 SavedModel detector converted to fp32 ONNX (parity-checked on the shapes set)."""
    root = tmp_path_factory.mktemp("shapes_model")
    return _convert(shapes_saved_model, root / "entry", shapes[0])


@pytest.fixture(scope="session")
def tflite_entry_dir(tmp_path_factory, shapes, shapes_tflite) -> Path:
    """Its TFLite twin (0-based class ids from TFLite_Detection_PostProcess), converted likewise."""
    root = tmp_path_factory.mktemp("tflite_model")
    return _convert(shapes_tflite, root / "entry", shapes[0])


@pytest.fixture
def shapes_entry(shapes_entry_dir, tmp_path) -> Path:
    dst = tmp_path / "entry"
    shutil.copytree(shapes_entry_dir, dst)
    return dst


# --- opt-in tiers --------------------------------------------------------------------------------

FULLSIZE_ENV = "DETZOO_FULLSIZE"


def pytest_addoption(parser):
    parser.addoption("--fullsize", action="store_true", default=False,
                     help=f"run the tests marked fullsize (TF zoo models at their public sizes, 90 classes; "
                          f"minutes to hours each); or set {FULLSIZE_ENV}=1")


def _fullsize_enabled(config) -> bool:
    return bool(config.getoption("--fullsize")) or os.environ.get(FULLSIZE_ENV, "").strip().lower() in (
        "1", "true", "yes", "on")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``fullsize`` are skipped unless asked for (CI never asks)."""
    if _fullsize_enabled(config):
        return
    skip = pytest.mark.skip(reason=f"fullsize: public zoo sizes, minutes to hours each; "
                                   f"run with --fullsize or {FULLSIZE_ENV}=1")
    for item in items:
        if item.get_closest_marker("fullsize") is not None:
            item.add_marker(skip)
