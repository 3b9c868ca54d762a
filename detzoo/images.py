"""Image decoding shared by calibration, parity and evaluation.

One code path turns a file into the RGB uint8 array the model is fed, so int8 calibration sees
exactly what evaluation sees.

Owns: decoding an image file to RGB uint8, listing image folders, image records and the demo
frames shipped in detzoo/data. Does not touch: resizing for a model (``detzoo.runners``),
annotations (``detzoo.coco.instances``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from detzoo.errors import DetzooError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS = 50_000_000  # refuse larger images: decoding one would take gigabytes


class ImageError(DetzooError):
    """One image could not be decoded; evaluation skips and lists it."""


@dataclass(frozen=True)
class ImageRecord:
    """An image to evaluate: its id (COCO image id, or position in a plain folder) and path."""

    image_id: int
    path: Path

    @property
    def key(self) -> str:
        return self.path.name


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode any image file to RGB uint8 [H, W, 3].

    Grayscale is replicated, palette and CMYK go through PIL's conversion, alpha is dropped (the
    TF Object Detection API decodes with 3 channels and discards alpha), 16-bit images are scaled
    to 8 bits. The format is read from the content, not the file name. EXIF orientation is not
    applied, as in COCO, whose annotations refer to the stored pixel grid.
    """
    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"image {path.name} is {w}x{h} ({w * h / 1e6:.0f} MP): "
                                     f"expected at most {MAX_PIXELS / 1e6:.0f} MP; refused, not downscaled")
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64)
                    peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                    gray = np.clip(np.rint(arr / peak * 255.0), 0, 255).astype(np.uint8)
                    return np.repeat(gray[..., None], 3, axis=2)
                if im.mode == "P" and "transparency" in im.info:
                    im = im.convert("RGBA")
                rgb = im.convert("RGB")
                rgb.load()
                return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"cannot decode image {path.name}: {e}") from None


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` (by suffix, sorted by name); errors when there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise DetzooError(f"images folder not found: {folder}")
    if not folder.is_dir():
        raise DetzooError(f"images path is not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DetzooError(f"images folder {folder} holds no images (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def folder_records(folder: str | os.PathLike, limit: int | None = None) -> list[ImageRecord]:
    """Plain folder (no annotations): ids are positions in name order, stable across runs."""
    files = list_images(folder)
    if limit is not None:
        files = files[:limit]
    return [ImageRecord(i + 1, p) for i, p in enumerate(files)]


def demo_dir(split: str) -> Path:
    """Embedded demo frames from vtest.avi, three disjoint splits (see PROVENANCE.md): ``calib``
    (int8 calibration), ``check`` (the int8 accuracy search's held-out images) and ``eval``."""
    if split not in ("calib", "check", "eval"):
        raise ValueError(f"demo split must be 'calib', 'check' or 'eval', got {split!r}")
    return Path(str(resources.files("detzoo") / "data" / "demo" / split))
