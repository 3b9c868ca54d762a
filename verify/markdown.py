"""``REPORT.md`` and the tables every page shares, rendered from a ``VerifyReport``.

The rows are made here once (``summary_rows``, ``coco_rows``); report.html and the model card put
the same rows in their own markup, and the CLI prints ``render_summary`` when a check fails.
Nothing here measures or reads files.
"""

from __future__ import annotations

from detzoo.coco import STAT_ROWS
from detzoo.verify.report import ModelReport, VerifyReport


def _f(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _drop_cell(m: ModelReport) -> str:
    d = m.drop_points
    if d is None:
        return "n/a"
    ci = m.drop_ci_points
    return f"{d:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def _agree_cell(m: ModelReport) -> str:
    parts = [_f(m.fidelity.stats.get("AP"))] if m.fidelity and m.fidelity.stats.get("AP") is not None else []
    if m.agreement:
        parts.append(f"{m.agreement.matched_share * 100:.1f}%")
    return " / ".join(parts) or "n/a"


def _latency_cell(m: ModelReport) -> str:
    return f"{m.latency.p50_ms:.1f} / {m.latency.p90_ms:.1f}" if m.latency else "n/a"


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


def summary_rows(r: VerifyReport) -> tuple[list, list]:
    """(header, rows): one row per model, shared by REPORT.md, report.html and the model card."""
    head = ["variant", "framework", "precision", r.metric, "drop, points [95% CI]", "AP50", "fidelity / agreement",
            "p50 / p90 ms", "speed-up", "size MB"]
    rows = []
    for name, m in r.models.items():
        src = name == "source"
        rows.append([name, m.framework, m.precision, _f(m.stats["AP"]), "-" if src else _drop_cell(m),
                     _f(m.stats["AP50"]), "-" if src else _agree_cell(m), _latency_cell(m),
                     "n/a" if m.speedup is None else f"{m.speedup:.2f}x", f"{m.size / 1e6:.2f}"])
    return head, rows


def summary_table(r: VerifyReport) -> list[str]:
    return markdown_table(*summary_rows(r))


def render_summary(r: VerifyReport) -> list[str]:
    """REPORT.md's head (title, mode, gate, the summary table and its notes): what the CLI prints
    when a check fails."""
    data = r.data
    out = [f"# Verification report: {r.name}", ""]
    if r.reference:
        out += [f"**Mode: reference (no annotations).** The source model's own detections scoring >= "
                f"{r.reference_threshold} are taken as ground truth, and every model's full detections are "
                f"scored against them with COCO AP: \"{r.metric}\" below measures how faithfully a model reproduces "
                "the source, not accuracy on labelled data (the source scores 1.0 by construction). "
                f"Images: {data.evaluated} from `{data.images_dir}`.", ""]
    else:
        lim = f"the first {data.limit} images by image id" if data.limit else "all images"
        evaluator = next(iter(r.models.values())).coco.evaluator
        out += [f"**Mode: ground truth.** COCO box AP ({evaluator}) against `{data.annotations}` on {lim} "
                f"in `{data.images_dir}`: {data.evaluated} images evaluated.", ""]
    if data.skipped:
        out += [f"{len(data.skipped)} image(s) could not be read and were skipped (listed below).", ""]
    verdict = "passed" if r.gate.passed else "FAILED (" + ", ".join(r.gate.failed) + ")"
    out += [f"Gate: {verdict}. Largest allowed {r.metric} drop: {r.gate.max_drop_points:g} points.", ""]

    out += summary_table(r)
    out.append("")
    notes = [f"drop = source - model, in points (x100); fidelity = COCO AP against the source's detections "
             f">= {r.reference_threshold}; agreement = share of those source detections matched by the "
             "model (same class, IoU >= 0.5)."]
    if r.bootstrap:
        notes.append(f"CI: paired bootstrap over images, {r.bootstrap['resamples']} resamples "
                     f"(seed {r.bootstrap['seed']}).")
    lat = r.latency
    if lat:
        mach = r.machine
        b = lat.batch
        per = f"batch {b} (ms per call of {b} images; images/s = {b} x 1000 / mean)" if b > 1 else "batch 1"
        notes.append(f"Latency: {per}, {lat.runs} timed runs per model after {lat.warmup} warm-up runs on "
                     f"{len(lat.images)} fixed images, round-robin over models; {lat.threads} intra-op "
                     f"thread(s) and 1 inter-op thread for TensorFlow and ONNX Runtime alike; model call only. "
                     f"CPU: {mach.get('cpu')} ({mach.get('cpu_count')} logical cores; "
                     f"{', '.join(mach.get('flags', [])) or 'no AVX2/AVX-512 flags'}; class "
                     f"{mach.get('cpu_class', 'unknown')}).")
    if data.feed:
        notes.append(f"Feeding: {data.feed}.")
    notes += [f"Note: {n}." for n in r.notes]
    return out + notes + [""]


def render_markdown(r: VerifyReport) -> str:
    out = render_summary(r)
    for name, m in r.models.items():
        out += [f"## {name}: {m.framework}, {m.precision} (`{m.file}`, sha256 {m.sha256[:16]}...)", ""]
        out += coco_table(m.stats) + [""]
        cats = m.coco.per_category
        if 1 < len(cats) <= 100:
            out += ["| category | AP | AP50 |", "|---|---|---|"]
            out += [f"| {c['name']} ({c['id']}) | {c['AP']:.3f} | {c['AP50']:.3f} |" for c in cats]
            out.append("")
        out += [f"- warning: {w}" for w in m.warnings]
        if m.warnings:
            out.append("")
    if r.data.skipped:
        out += ["## Skipped images", ""]
        out += [f"- `{s['file']}` (id {s['image_id']}): {s['error']}" for s in r.data.skipped]
        out.append("")
    return "\n".join(out)
