"""``REPORT.md`` rendered from the ``report.json`` dict alone, so the two can never disagree."""

from __future__ import annotations

import json
from pathlib import Path

from detzoo.coco import STAT_ROWS
from detzoo.errors import DetzooError


def load_report(folder) -> dict:
    """An entry's ``report.json`` (written by ``detzoo verify``)."""
    path = Path(folder) / "report.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DetzooError(f"cannot read {path} ({type(e).__name__}); run 'detzoo verify {folder}' first") from None


def _f(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _drop_cell(m: dict) -> str:
    d = m.get("drop", {}).get("AP")
    if d is None:
        return "n/a"
    cell = f"{d * 100:+.2f}"
    ci = m.get("drop_ci")
    if ci:
        cell += f" [{ci['low'] * 100:+.2f}, {ci['high'] * 100:+.2f}]"
    return cell


def _agree_cell(m: dict) -> str:
    fid = m.get("fidelity", {}).get("stats", {}).get("AP") if m.get("fidelity") else None
    ag = m.get("agreement")
    parts = [_f(fid)] if fid is not None else []
    if ag:
        parts.append(f"{ag['matched_share'] * 100:.1f}%")
    return " / ".join(parts) or "n/a"


def _latency_cell(m: dict) -> str:
    lat = m.get("latency")
    return f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f}" if lat else "n/a"


def markdown_table(head: list, rows: list) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def coco_rows(stats: dict) -> tuple[list, list]:
    """(header, rows) of the 12 stats in the zoo's table format."""
    rows = [["Average Precision (AP)" if kind == "AP" else "Average Recall (AR)", iou, area, max_dets,
             f"{stats[name]:.3f}"] for name, kind, iou, area, max_dets in STAT_ROWS]
    return ["Metric", "IoU", "Area", "maxDets", "Value"], rows


def coco_table(stats: dict) -> list[str]:
    return markdown_table(*coco_rows(stats))


def summary_rows(r: dict) -> tuple[list, list]:
    """(header, rows): one row per model, shared by REPORT.md, report.html and the model card."""
    metric = "fidelity AP" if r["mode"] == "reference" else "mAP"
    head = ["variant", "framework", "precision", metric, "drop, points [95% CI]", "AP50", "fidelity / agreement",
            "p50 / p90 ms", "speed-up", "size MB"]
    rows = []
    for name, m in r["models"].items():
        s = m["coco"]["stats"]
        su = m.get("speedup")
        rows.append([name, m["framework"], m["precision"], _f(s["AP"]), "-" if name == "source" else _drop_cell(m),
                     _f(s["AP50"]), "-" if name == "source" else _agree_cell(m), _latency_cell(m),
                     "n/a" if su is None else f"{su:.2f}x", f"{m['size'] / 1e6:.2f}"])
    return head, rows


def summary_table(r: dict) -> list[str]:
    return markdown_table(*summary_rows(r))


def render_summary(r: dict) -> list[str]:
    """REPORT.md's head (title, mode, gate, the summary table and its notes): what the CLI prints
    when a check fails, rendered from the report itself."""
    ref = r["mode"] == "reference"
    data = r["data"]
    metric = "fidelity AP" if ref else "mAP"
    out = [f"# Verification report: {r['name']}", ""]
    if ref:
        out += [f"**Mode: reference (no annotations).** The source model's own detections scoring >= "
                f"{r['reference_threshold']} are taken as ground truth, and every model's full detections are "
                f"scored against them with COCO AP: \"{metric}\" below measures how faithfully a model reproduces "
                "the source, not accuracy on labelled data (the source scores 1.0 by construction). "
                f"Images: {data['evaluated']} from `{data['images_dir']}`.", ""]
    else:
        lim = f"the first {data['limit']} images by image id" if data["limit"] else "all images"
        evaluator = next(iter(r["models"].values()))["coco"].get("evaluator", "pycocotools")
        out += [f"**Mode: ground truth.** COCO box AP ({evaluator}) against `{data['annotations']}` on {lim} "
                f"in `{data['images_dir']}`: {data['evaluated']} images evaluated.", ""]
    if data["skipped"]:
        out += [f"{len(data['skipped'])} image(s) could not be read and were skipped (listed below).", ""]
    gate = r["gate"]
    verdict = "passed" if gate["passed"] else "FAILED (" + ", ".join(gate["failed"]) + ")"
    out += [f"Gate: {verdict}. Largest allowed {metric} drop: {gate['max_drop_points']:g} points.", ""]

    out += summary_table(r)
    out.append("")
    notes = [f"drop = source - model, in points (x100); fidelity = COCO AP against the source's detections "
             f">= {r['reference_threshold']}; agreement = share of those source detections matched by the "
             "model (same class, IoU >= 0.5)."]
    if r.get("bootstrap"):
        b = r["bootstrap"]
        notes.append(f"CI: paired bootstrap over images, {b['resamples']} resamples (seed {b['seed']}).")
    lat = r.get("latency")
    if lat:
        mach = r["machine"]
        b = lat.get("batch", 1)
        per = f"batch {b} (ms per call of {b} images; images/s = {b} x 1000 / mean)" if b > 1 else "batch 1"
        notes.append(f"Latency: {per}, {lat['runs']} timed runs per model after {lat['warmup']} warm-up runs on "
                     f"{len(lat['images'])} fixed images, round-robin over models; {lat['threads']} intra-op "
                     f"thread(s) and 1 inter-op thread for TensorFlow and ONNX Runtime alike; model call only. "
                     f"CPU: {mach.get('cpu')} ({mach.get('cpu_count')} logical cores; "
                     f"{', '.join(mach.get('flags', [])) or 'no AVX2/AVX-512 flags'}; class "
                     f"{mach.get('cpu_class', 'unknown')}).")
    if r["data"].get("feed"):
        notes.append(f"Feeding: {r['data']['feed']}.")
    notes += [f"Note: {n}." for n in r.get("notes", [])]
    return out + notes + [""]


def render_markdown(r: dict) -> str:
    data = r["data"]
    out = render_summary(r)
    for name, m in r["models"].items():
        out += [f"## {name}: {m['framework']}, {m['precision']} (`{m['file']}`, sha256 {m['sha256'][:16]}...)", ""]
        out += coco_table(m["coco"]["stats"]) + [""]
        cats = m["coco"]["per_category"]
        if 1 < len(cats) <= 100:
            out += ["| category | AP | AP50 |", "|---|---|---|"]
            out += [f"| {c['name']} ({c['id']}) | {c['AP']:.3f} | {c['AP50']:.3f} |" for c in cats]
            out.append("")
        for w in m.get("warnings", []):
            out.append(f"- warning: {w}")
        if m.get("warnings"):
            out.append("")
    if data["skipped"]:
        out += ["## Skipped images", ""]
        out += [f"- `{s['file']}` (id {s['image_id']}): {s['error']}" for s in data["skipped"]]
        out.append("")
    return "\n".join(out)
