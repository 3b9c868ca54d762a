"""COCO instances files: reading and checking them, and the image records they name.

Refuses, with one line naming the problem, only what pycocotools could not evaluate as meant;
what is unusual but evaluated unchanged (boxes past their image) becomes a warning.

Owns: checking an instances dict and choosing the images (ids, paths) a run measures. Does not
touch: evaluation, models, image decoding (``detzoo.images``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from detzoo.errors import DetzooError
from detzoo.images import ImageRecord

OVERHANG_TOLERANCE = 1.0  # px: COCO's own boxes overshoot their image by rounding, within this


class Instances(dict):
    """A checked COCO instances dict, as pycocotools is given it, plus ``warnings``: one line per
    thing in the file that is unusual but evaluated unchanged, for the caller to show once."""

    def __init__(self, *args, warnings=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.warnings = list(warnings)


def load_instances(path: str | os.PathLike) -> Instances:
    """Read and check a COCO instances JSON; fills ``area`` (w*h) and ``iscrowd`` (0) when absent.

    Raises DetzooError with one line naming what is wrong: only what is malformed (what
    pycocotools could not evaluate as meant). Categories missing from the file are derived from
    the annotations' category ids. Boxes reaching past their image are kept as they are, as
    pycocotools keeps them, and counted in the result's ``warnings``.
    """
    path = Path(path)
    if not path.is_file():
        raise DetzooError(f"annotations file not found: {path}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DetzooError(f"annotations {path.name} is not JSON ({e}); expected a COCO instances file") from None
    return check_instances(d, path.name)


def check_instances(d, where: str = "annotations") -> Instances:
    if not isinstance(d, dict):
        raise DetzooError(f"{where} holds a JSON {type(d).__name__}; expected a COCO instances object "
                          "with 'images' and 'annotations'")
    missing = [k for k in ("images", "annotations") if not isinstance(d.get(k), list)]
    if missing:
        raise DetzooError(f"{where} lacks {' and '.join(repr(k) for k in missing)} lists; expected a COCO "
                          "instances file (keys: images, annotations, categories)")
    ids, sizes = set(), {}
    for img in d["images"]:
        if not (isinstance(img, dict) and isinstance(img.get("id"), int) and isinstance(img.get("file_name"), str)):
            raise DetzooError(f"{where}: image entry {str(img)[:80]} needs an integer 'id' and a 'file_name'")
        if img["id"] in ids:
            raise DetzooError(f"{where}: image id {img['id']} appears twice; expected unique ids")
        ids.add(img["id"])
        if isinstance(img.get("width"), (int, float)) and isinstance(img.get("height"), (int, float)):
            sizes[img["id"]] = (img["width"], img["height"])
    if not ids:
        raise DetzooError(f"{where} lists no images")
    anns, ann_ids = [], set()
    n_over, max_over = 0, 0.0
    for a in d["annotations"]:
        ok = (isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("category_id"), int)
              and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4
              and all(isinstance(v, (int, float)) for v in a["bbox"]))
        if not ok:
            raise DetzooError(f"{where}: annotation {str(a)[:80]} needs integer 'id', 'image_id', 'category_id' "
                              "and a 4-number 'bbox' [x, y, width, height]")
        if a.get("image_id") not in ids:
            raise DetzooError(f"{where}: annotation {a['id']} names image id {a.get('image_id')!r}, "
                              "which is not in 'images'")
        if a["id"] < 1 or a["id"] in ann_ids:
            # pycocotools matches by annotation id; 0 reads as "unmatched" and duplicates collapse.
            raise DetzooError(f"{where}: annotation id {a['id']} is {'not positive' if a['id'] < 1 else 'repeated'}; "
                              "expected unique ids >= 1")
        ann_ids.add(a["id"])
        x, y, w, h = a["bbox"]
        if w < 0 or h < 0:
            raise DetzooError(f"{where}: annotation {a['id']} has a negative size {a['bbox']}; "
                              "expected bbox [x, y, width, height] with width, height >= 0")
        size = sizes.get(a["image_id"])
        if size:  # pycocotools neither clips nor drops such boxes; neither does detzoo
            over = max(-x, -y, x + w - size[0], y + h - size[1])
            if over > OVERHANG_TOLERANCE:
                n_over, max_over = n_over + 1, max(max_over, over)
        if "area" not in a or "iscrowd" not in a:
            a = {**a, "area": a.get("area", a["bbox"][2] * a["bbox"][3]), "iscrowd": a.get("iscrowd", 0)}
        anns.append(a)
    cats = d.get("categories")
    if not isinstance(cats, list) or not cats:
        cats = [{"id": c, "name": str(c)} for c in sorted({a["category_id"] for a in anns})]
    elif not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in cats):
        raise DetzooError(f"{where}: every category needs an integer 'id'")
    else:
        unknown = sorted({a["category_id"] for a in anns} - {c["id"] for c in cats})
        if unknown:
            raise DetzooError(f"{where}: annotations use category ids {unknown[:5]} that 'categories' "
                              "does not list")
    warnings = []
    if n_over:
        warnings.append(f"{where}: {n_over} annotation box(es) extend more than {OVERHANG_TOLERANCE:g} px past "
                        f"their image (largest overhang {max_over:.4g} px); evaluated as pycocotools does, "
                        "unchanged")
    return Instances({**d, "annotations": anns, "categories": cats}, warnings=warnings)


def first_image_ids(gt: dict, limit: int | None = None) -> list[int]:
    """The first ``limit`` image ids in ascending order (the zoo measures the first 1000 of val2017)."""
    ids = sorted(img["id"] for img in gt["images"])
    return ids if limit is None else ids[:limit]


def coco_records(gt: dict, images_dir: str | os.PathLike, limit: int | None = None) -> list[ImageRecord]:
    """Image records for the first ``limit`` images by id, each ``file_name`` looked up in ``images_dir``.

    Refuses file names that leave the folder and files that are not there (naming how many and
    which), so a wrong --images is caught before any model runs.
    """
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DetzooError(f"images folder not found: {folder}")
    by_id = {img["id"]: img["file_name"] for img in gt["images"]}
    records, missing = [], []
    for i in first_image_ids(gt, limit):
        name = by_id[i]
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise DetzooError(f"annotations name image file {name!r}: expected a path inside the images folder")
        p = folder / rel
        if not p.is_file():
            missing.append(name)
        records.append(ImageRecord(int(i), p))
    if missing:
        raise DetzooError(f"{len(missing)} of {len(records)} images named in the annotations are not in {folder} "
                          f"(first: {', '.join(missing[:3])}); expected the folder the annotations describe")
    return records
