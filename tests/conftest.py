"""Session fixtures shared by every stage's tests: the real model, its fp32 artifact, tiny models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
