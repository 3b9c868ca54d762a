"""Fixtures for quantize: the tiny TF detectors converted once, the shapes set split into
calibration and check halves (disjoint, as --max-drop requires)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def _convert(source: Path, out: Path) -> Path:
    from detzoo.convert import ConvertConfig, convert

    convert(ConvertConfig(source=source, out=out, check=False))
    return out


@pytest.fixture(scope="session")
def shapes_split(shapes, tmp_path_factory) -> tuple[Path, Path]:
    """(calib_dir, check_dir): the first and second half of the shapes images."""
    images = sorted(Path(shapes[0]).iterdir())
    root = tmp_path_factory.mktemp("split")
    half = len(images) // 2
    for name, part in (("calib", images[:half]), ("check", images[half:])):
        (root / name).mkdir()
        for p in part:
            shutil.copy(p, root / name / p.name)
    return root / "calib", root / "check"


@pytest.fixture(scope="session")
def sm_fp32_dir(shapes_saved_model, tmp_path_factory) -> Path:
    return _convert(shapes_saved_model, tmp_path_factory.mktemp("q_sm") / "entry")


@pytest.fixture(scope="session")
def tflite_fp32_dir(shapes_tflite, tmp_path_factory) -> Path:
    return _convert(shapes_tflite, tmp_path_factory.mktemp("q_tfl") / "entry")


@pytest.fixture(scope="session")
def two_stage_fp32_dir(two_stage_graph, tmp_path_factory) -> Path:
    return _convert(two_stage_graph, tmp_path_factory.mktemp("q_two") / "entry")


@pytest.fixture
def sm_entry(sm_fp32_dir, tmp_path) -> Path:
    """A private copy of the converted SavedModel fixture."""
    dst = tmp_path / "entry"
    shutil.copytree(sm_fp32_dir, dst)
    return dst
